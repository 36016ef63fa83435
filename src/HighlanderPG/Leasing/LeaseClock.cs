namespace HighlanderPG.Leasing;

/// <summary>
/// The client side of the server-enforced lease, on the node's monotonic clock.
/// </summary>
/// <remarks>
/// The server ends the session <c>LeaseDuration</c> after it last heard from it (<c>idle_session_timeout</c>), so it
/// cannot free the locks before (its receipt of the last acknowledged request) + L, which is later than
/// (our send time of that request) + L. The node's deadline is therefore <c>send time + L − margin</c>, and its
/// children must be stopped by then: stopping starts at <c>deadline − StopTimeout</c>. Only acknowledged requests
/// count, and an older acknowledgement never moves the deadline back.
/// See lease-protocol.md, "Client-side rule that makes invariant 1 hold".
/// </remarks>
internal sealed class LeaseClock(TimeProvider time, TimeSpan lease, TimeSpan margin, TimeSpan stopTimeout)
{
    private long _lastAckSendTimestamp = long.MinValue;

    public TimeProvider Time { get; } = time;

    /// <summary>Whether any request has been acknowledged since <see cref="Reset"/>.</summary>
    public bool HasAck => _lastAckSendTimestamp != long.MinValue;

    /// <summary>Records that the server acknowledged a request sent at <paramref name="sendTimestamp"/>.</summary>
    public void Acknowledge(long sendTimestamp)
    {
        if (sendTimestamp > _lastAckSendTimestamp)
        {
            _lastAckSendTimestamp = sendTimestamp;
        }
    }

    /// <summary>Forgets every acknowledgement (a new session starts with none).</summary>
    public void Reset() => _lastAckSendTimestamp = long.MinValue;

    /// <summary>The deadline as a monotonic timestamp: the server may free the locks no earlier than <c>margin</c> after it.</summary>
    public long DeadlineTimestamp => HasAck ? _lastAckSendTimestamp + ToTicks(lease - margin) : long.MinValue;

    /// <summary>When children must start stopping so that they stopped by the deadline.</summary>
    public long StopTimestamp => HasAck ? DeadlineTimestamp - ToTicks(stopTimeout) : long.MinValue;

    /// <summary>Time left until children must start stopping (zero or less: now).</summary>
    public TimeSpan UntilStop => HasAck ? Time.GetElapsedTime(Time.GetTimestamp(), StopTimestamp) : TimeSpan.Zero;

    /// <summary>Time left until the deadline.</summary>
    public TimeSpan UntilDeadline => HasAck ? Time.GetElapsedTime(Time.GetTimestamp(), DeadlineTimestamp) : TimeSpan.Zero;

    /// <summary>Whether the node must stop its children now.</summary>
    public bool MustStop => !HasAck || Time.GetTimestamp() >= StopTimestamp;

    private long ToTicks(TimeSpan span) => (long)(span.Ticks * (Time.TimestampFrequency / (double)TimeSpan.TicksPerSecond));
}
