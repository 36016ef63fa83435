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
/// The spans come from <see cref="LeaseTimings"/>. See docs/lease-protocol.md, "The client-side deadline".
/// </remarks>
internal sealed class LeaseClock(TimeProvider time, LeaseTimings timings)
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
    public long DeadlineTimestamp => HasAck ? _lastAckSendTimestamp + LeaseTimings.ToTimestampDelta(timings.DeadlineAfterAck, Time) : long.MinValue;

    /// <summary>When children must start stopping so that they stopped by the deadline.</summary>
    public long StopTimestamp => HasAck ? _lastAckSendTimestamp + LeaseTimings.ToTimestampDelta(timings.StopPointAfterAck, Time) : long.MinValue;

    /// <summary>
    /// The earliest point (on this node's clock) at which the server may free the locks and give them to another node:
    /// the send time of the last acknowledged request plus the lease; <see cref="long.MinValue"/> without an acknowledgement.
    /// </summary>
    public long ServerMayFreeTimestamp => HasAck ? _lastAckSendTimestamp + LeaseTimings.ToTimestampDelta(timings.Lease, Time) : long.MinValue;

    /// <summary>
    /// When a child still running under a lease lost now is escalated. Lost by the deadline (<paramref name="byDeadline"/>):
    /// the children have until the deadline. Lost because the session broke: the server may already have freed the locks,
    /// so no more than the stop timeout from now, and never past the deadline.
    /// </summary>
    public long EscalationTimestamp(bool byDeadline)
    {
        var byStopTimeout = Time.GetTimestamp() + LeaseTimings.ToTimestampDelta(timings.StopTimeout, Time);
        return !HasAck ? byStopTimeout
            : byDeadline ? DeadlineTimestamp
            : Math.Min(DeadlineTimestamp, byStopTimeout);
    }

    /// <summary>
    /// For a lease lost now: when the server may give its lock away at the earliest. Lost by the deadline: the last
    /// acknowledged send + the lease. Lost because the session broke: unknown (<see cref="long.MinValue"/>): it may be gone already.
    /// </summary>
    public long ServerMayFreeAfterLoss(bool byDeadline) => byDeadline ? ServerMayFreeTimestamp : long.MinValue;

    /// <summary>Time left until children must start stopping (zero or less: now).</summary>
    public TimeSpan UntilStop => HasAck ? Time.GetElapsedTime(Time.GetTimestamp(), StopTimestamp) : TimeSpan.Zero;

    /// <summary>Time left until the deadline.</summary>
    public TimeSpan UntilDeadline => HasAck ? Time.GetElapsedTime(Time.GetTimestamp(), DeadlineTimestamp) : TimeSpan.Zero;

    /// <summary>Whether the node must stop its children now.</summary>
    public bool MustStop => !HasAck || Time.GetTimestamp() >= StopTimestamp;
}
