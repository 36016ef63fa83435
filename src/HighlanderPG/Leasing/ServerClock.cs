namespace HighlanderPG.Leasing;

/// <summary>
/// Follows the server's wall clock (<c>clock_timestamp()</c>, read by the lock session's statements) against this node's
/// monotonic clock, to see it step forward.
/// </summary>
/// <remarks>
/// PostgreSQL measures <c>idle_session_timeout</c> (the server-side lease) on its wall clock: a forward step of that
/// clock by X ends every session idle for more than L − X at once, freeing locks whose holders may still run their
/// children (they were told nothing: their own deadline, on their monotonic clock, is still ahead). A node that has seen
/// the server's clock before such a step notices it in the first reply after it, and takes no lock for the lock-delay:
/// the try statement itself takes nothing when the server's clock is past <see cref="Bound"/>, so a lock freed by the
/// step is never taken in the same breath. A step of at most the safety margin frees nothing early (the holder's
/// deadline comes first); steps larger than the tolerance (half the margin) plus the reading's own round trip are
/// always seen. The reading survives reconnects: a node that connects to a server whose clock differs from the last
/// one's (a failover) waits the lock-delay too. A node's first session has no earlier reading: it cannot see a step
/// that happened before it connected. See docs/lease-protocol.md, "Steps of the server's wall clock".
/// </remarks>
internal sealed class ServerClock(TimeProvider time, TimeSpan tolerance)
{
    private DateTime _serverTime;
    private long _sentTimestamp = long.MinValue;

    /// <summary>How far past the expected time the server's clock may read before it counts as stepped forward.</summary>
    public TimeSpan Tolerance { get; } = tolerance;

    /// <summary>Whether the server's clock has been read (in any session of this node).</summary>
    public bool HasReading => _sentTimestamp != long.MinValue;

    /// <summary>
    /// The latest server time a statement sent at <paramref name="sendTimestamp"/> may read unless the server's clock
    /// stepped forward by more than the tolerance since the last reading (the earlier reading was taken no earlier than
    /// its request's send); <see langword="null"/> without a reading.
    /// </summary>
    public DateTime? Bound(long sendTimestamp) =>
        HasReading ? _serverTime + time.GetElapsedTime(_sentTimestamp, sendTimestamp) + Tolerance : null;

    /// <summary>
    /// Records a reading of the server's clock by a request sent at <paramref name="sentTimestamp"/> and answered at
    /// <paramref name="receivedTimestamp"/>. Returns how far it reads ahead of the latest time it could show without a
    /// step since the last reading (positive: stepped forward by at least that much; a backward step or none: zero or
    /// less), or <see langword="null"/> for the first reading.
    /// </summary>
    public TimeSpan? Observe(DateTime serverTime, long sentTimestamp, long receivedTimestamp)
    {
        var ahead = Ahead(serverTime, receivedTimestamp);
        _serverTime = serverTime;
        _sentTimestamp = sentTimestamp;
        return ahead;
    }

    /// <summary>
    /// How far a reading answered at <paramref name="receivedTimestamp"/> is ahead of the latest time the server's clock
    /// could show without a step since the last reading (as <see cref="Observe"/>), without recording it.
    /// </summary>
    public TimeSpan? Ahead(DateTime serverTime, long receivedTimestamp) =>
        HasReading ? serverTime - (_serverTime + time.GetElapsedTime(_sentTimestamp, receivedTimestamp)) : null;
}
