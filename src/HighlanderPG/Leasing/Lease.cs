namespace HighlanderPG.Leasing;

/// <summary>One acquisition of one singleton's lock by this node's lock session.</summary>
internal sealed class Lease
{
    private readonly CancellationTokenSource _lost = new();
    private readonly object _gate = new();

    public Lease(long key, int generation, DateTimeOffset acquiredAt)
    {
        Key = key;
        Generation = generation;
        AcquiredAt = acquiredAt;
    }

    public long Key { get; }

    /// <summary>The lock session's generation (each reconnect is a new one): a lease of an older generation is gone.</summary>
    public int Generation { get; }

    public DateTimeOffset AcquiredAt { get; }

    /// <summary>The fencing epoch of this acquisition, when fencing is on (set before the lease is handed to its runner).</summary>
    public long? Epoch { get; set; }

    /// <summary>Fires when the session stops vouching for this lock (lease expiring, session broken, node stopping).</summary>
    public CancellationToken LostToken => _lost.Token;

    public bool IsLost => _lost.IsCancellationRequested;

    /// <summary>Why the lock was lost, once it is.</summary>
    public string? LossReason { get; private set; }

    /// <summary>Monotonic timestamp by which the child must be gone (escalation point), once lost.</summary>
    public long EscalateAtTimestamp { get; private set; } = long.MaxValue;

    /// <summary>
    /// Once lost: the earliest monotonic timestamp at which the server may give the lock to another node (the last
    /// acknowledged send + the lease), or <see cref="long.MinValue"/> when that is unknown because the session broke or the
    /// lock was released (the lock may be gone already).
    /// </summary>
    public long ServerMayFreeAtTimestamp { get; private set; } = long.MinValue;

    /// <summary>The session stops vouching for this lock.</summary>
    /// <param name="reason">Why, in words.</param>
    /// <param name="escalateAtTimestamp">When a child still running under it is escalated.</param>
    /// <param name="serverMayFreeAtTimestamp">When the server may give the lock away at the earliest; <see cref="long.MinValue"/>: it may be gone now.</param>
    public void Lose(string reason, long escalateAtTimestamp, long serverMayFreeAtTimestamp = long.MinValue)
    {
        lock (_gate)
        {
            if (IsLost)
            {
                return;
            }

            LossReason = reason;
            EscalateAtTimestamp = escalateAtTimestamp;
            ServerMayFreeAtTimestamp = serverMayFreeAtTimestamp;
        }

        // Never run the children's cancellation callbacks here: this is called on the session loop (or the lease guard's thread),
        // which must go on to tell the other leases and keep its own deadline whatever a child's callback does.
        _ = _lost.CancelAsync();
    }
}
