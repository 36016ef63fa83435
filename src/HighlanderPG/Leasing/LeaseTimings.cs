using HighlanderPG.Hosting;

namespace HighlanderPG.Leasing;

/// <summary>
/// The lease's arithmetic in one place: the inequality the options must satisfy and every bound derived from it,
/// computed once from validated <see cref="HighlanderOptions"/>. The session, the lease clock, the runners, the children,
/// the connection settings and the CLI read these values; nobody re-derives them.
/// </summary>
/// <remarks>
/// <c>2 × Heartbeat + StopTimeout + SafetyMargin ≤ Lease</c>: a healthy node may miss one heartbeat without stopping its
/// children, and a cut-off node has its children stopped (and escalates) before the server could give the lock to
/// anyone else. See docs/lease-protocol.md, "The lease inequality" and "The client-side deadline".
/// </remarks>
internal sealed class LeaseTimings
{
    /// <summary>The default bound of a follower's blocking wait, when the lease is long enough for it.</summary>
    internal static readonly TimeSpan DefaultWaitSlice = TimeSpan.FromSeconds(5);

    /// <summary>The most a child command is given between SIGTERM and SIGKILL is this much less than its stop timeout.</summary>
    private static readonly TimeSpan KillReserve = TimeSpan.FromMilliseconds(250);

    private LeaseTimings(HighlanderOptions options)
    {
        Lease = options.LeaseDuration;
        Heartbeat = options.HeartbeatInterval;
        StopTimeout = options.StopTimeout;
        SafetyMargin = options.SafetyMargin;
        WaitSlice = EffectiveWaitSlice(options);
        LockDelay = options.LockDelayAfterServerStart ?? options.LeaseDuration;
        SpreadGrace = options.SpreadGrace ?? options.HeartbeatInterval;
        SpreadSettle = options.SpreadSettleTime ?? (options.HeartbeatInterval * 5);
    }

    /// <summary>
    /// Spread placement: how long a node at or above its share leaves a free singleton to the others before it tries it
    /// anyway (also the join window of a new session, and the hold-off of a hand-over). It adds at most this much (plus
    /// the time until the node's next wake-up, which the grace itself sets) to the bound of 0x. The option, or the heartbeat.
    /// </summary>
    public TimeSpan SpreadGrace { get; }

    /// <summary>
    /// Spread placement: the longest join window of a new session. It lasts the grace, and another grace each time it ends
    /// while some member joined within the last grace (nodes started one after another), up to this: 4 × the grace. It
    /// holds back only that session's own tries, so it adds to 0x only when nothing else runs the singletons (a cold start).
    /// </summary>
    public TimeSpan SpreadJoinWindowMax => SpreadGrace * 4;

    /// <summary>Spread placement: how long a member must have been live before others hand singletons over to it. The option, or 5 heartbeats.</summary>
    public TimeSpan SpreadSettle { get; }

    /// <summary>The server-side lease (<c>idle_session_timeout</c>).</summary>
    public TimeSpan Lease { get; }

    /// <summary>How often the session renews the lease with a round trip.</summary>
    public TimeSpan Heartbeat { get; }

    /// <summary>How long a child is given to stop after it is told to.</summary>
    public TimeSpan StopTimeout { get; }

    /// <summary>What is taken off the lease on the node's own clock (clock-rate drift, scheduling, the escalation itself).</summary>
    public TimeSpan SafetyMargin { get; }

    /// <summary>The bound of a follower's blocking wait (<c>lock_timeout</c>): the option, or min(5 s, a third of the lease).</summary>
    public TimeSpan WaitSlice { get; }

    /// <summary>How long after a server (re)start no lock is taken: the option, or the lease.</summary>
    public TimeSpan LockDelay { get; }

    /// <summary>
    /// How far ahead of its expected time the server's wall clock may read before it counts as stepped forward
    /// (<see cref="ServerClock"/>): half the safety margin. A step of up to the margin frees no lock early.
    /// </summary>
    public TimeSpan ClockStepTolerance => SafetyMargin / 2;

    /// <summary>The client-side deadline after the send time of the last acknowledged request: <c>Lease − SafetyMargin</c>.</summary>
    public TimeSpan DeadlineAfterAck => Lease - SafetyMargin;

    /// <summary>When children must start stopping after the send time of the last acknowledged request: <c>DeadlineAfterAck − StopTimeout</c>.</summary>
    public TimeSpan StopPointAfterAck => DeadlineAfterAck - StopTimeout;

    /// <summary>
    /// The command timeout of HighlanderPG's own connections, in whole seconds (at least 1): the lease, rounded up. A round
    /// trip the node has given up on (its deadline came first) then fails on its own, and its connection is disposed.
    /// </summary>
    public int CommandTimeoutSeconds => Math.Max(1, (int)Math.Ceiling(Lease.TotalSeconds));

    /// <summary>The value of <c>idle_session_timeout</c> (and <c>idle_in_transaction_session_timeout</c>), in milliseconds.</summary>
    public long IdleSessionTimeoutMilliseconds => (long)Lease.TotalMilliseconds;

    /// <summary>The weaker mode's <c>tcp_keepalives_idle</c> in whole seconds (a third of the lease rounded up to whole seconds, rounded down, at least 1).</summary>
    public int KeepalivesIdleSeconds => Math.Max(1, LeaseSeconds / 3);

    /// <summary>The weaker mode's <c>tcp_keepalives_count</c> (probes one second apart), so the server never drops a client before the lease.</summary>
    public int KeepalivesCount => Math.Max(1, LeaseSeconds - KeepalivesIdleSeconds + 1);

    /// <summary>
    /// When a child command that did not end after SIGTERM gets SIGKILL, counted from the SIGTERM: its stop timeout less
    /// a little (at most 250 ms, at most a quarter of it), so that the kill lands within the stop timeout.
    /// </summary>
    public TimeSpan ChildKillAfter => StopTimeout - TimeSpan.FromTicks(Math.Min(KillReserve.Ticks, StopTimeout.Ticks / 4));

    private int LeaseSeconds => (int)Math.Ceiling(Lease.TotalSeconds);

    /// <summary>The timings of <paramref name="options"/>, which must have passed <see cref="Check"/>.</summary>
    public static LeaseTimings From(HighlanderOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        return new LeaseTimings(options);
    }

    /// <summary>Converts a span into a difference of <see cref="TimeProvider.GetTimestamp"/> values of <paramref name="time"/>.</summary>
    public static long ToTimestampDelta(TimeSpan span, TimeProvider time) =>
        (long)(span.Ticks * (time.TimestampFrequency / (double)TimeSpan.TicksPerSecond));

    /// <summary>
    /// The time left until <paramref name="timestamp"/> (a <see cref="TimeProvider.GetTimestamp"/> value), never negative:
    /// <see cref="TimeSpan.Zero"/> when it has passed or is unknown (<see cref="long.MinValue"/>).
    /// </summary>
    public static TimeSpan Until(long timestamp, TimeProvider time)
    {
        if (timestamp == long.MinValue)
        {
            return TimeSpan.Zero;
        }

        var left = time.GetElapsedTime(time.GetTimestamp(), timestamp);
        return left > TimeSpan.Zero ? left : TimeSpan.Zero;
    }

    /// <summary>The bound of a follower's blocking wait: the option when set, otherwise min(5 s, a third of the lease in whole milliseconds).</summary>
    internal static TimeSpan EffectiveWaitSlice(HighlanderOptions options)
    {
        if (options.WaitSlice is { } explicitSlice)
        {
            return explicitSlice;
        }

        var third = TimeSpan.FromMilliseconds(Math.Max(1, (long)options.LeaseDuration.TotalMilliseconds / 3));
        return third < DefaultWaitSlice ? third : DefaultWaitSlice;
    }

    /// <summary>The longest lease (and the longest heartbeat, stop timeout or safety margin, which fit inside it).</summary>
    internal static readonly TimeSpan MaxLease = TimeSpan.FromDays(1);

    /// <summary>The longest lock-delay after a server start (a node takes no lock meanwhile).</summary>
    internal static readonly TimeSpan MaxLockDelay = TimeSpan.FromDays(7);

    /// <summary>What is wrong with the lease-related options, each naming the options involved.</summary>
    public static IEnumerable<OptionProblem> Check(HighlanderOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        var lease = options.LeaseDuration;
        if (lease < TimeSpan.FromSeconds(1) || lease.Ticks % TimeSpan.TicksPerMillisecond != 0 || lease > MaxLease)
        {
            yield return Problem($"{nameof(HighlanderOptions.LeaseDuration)} is {lease}; it must be between 1 second and 1 day, in whole milliseconds.", nameof(HighlanderOptions.LeaseDuration));
        }

        // Each at most a day (the longest lease) before any sum or product of them: TimeSpan.MaxValue ("never") would
        // overflow the arithmetic below instead of being refused with a message that names it.
        var outOfRange = false;
        foreach (var (value, option) in new[]
        {
            (options.HeartbeatInterval, nameof(HighlanderOptions.HeartbeatInterval)),
            (options.StopTimeout, nameof(HighlanderOptions.StopTimeout)),
            (options.SafetyMargin, nameof(HighlanderOptions.SafetyMargin)),
        })
        {
            if (value <= TimeSpan.Zero)
            {
                yield return Problem($"{option} must be positive (it is {value}).", option);
            }
            else if (value > MaxLease)
            {
                outOfRange = true;
                yield return Problem($"{option} is {value}; it must be at most 1 day (it fits inside the lease, which is at most 1 day).", option);
            }
        }

        if (options.WaitSlice is { } waitSlice)
        {
            if (waitSlice <= TimeSpan.Zero)
            {
                yield return Problem($"{nameof(HighlanderOptions.WaitSlice)} must be positive (it is {waitSlice}).", nameof(HighlanderOptions.WaitSlice));
            }

            if (waitSlice >= lease)
            {
                yield return Problem($"{nameof(HighlanderOptions.WaitSlice)} ({waitSlice}) must be shorter than {nameof(HighlanderOptions.LeaseDuration)} ({lease}), which bounds every statement of HighlanderPG's sessions.", nameof(HighlanderOptions.WaitSlice), nameof(HighlanderOptions.LeaseDuration));
            }
        }

        if (options.LockDelayAfterServerStart is { } tooLong && tooLong > MaxLockDelay)
        {
            yield return Problem($"{nameof(HighlanderOptions.LockDelayAfterServerStart)} is {tooLong}; it must be at most 7 days (a node takes no lock for that long after the server starts).", nameof(HighlanderOptions.LockDelayAfterServerStart));
        }

        if (options.LockDelayAfterServerStart is { } lockDelay && lockDelay < lease)
        {
            yield return Problem($"{nameof(HighlanderOptions.LockDelayAfterServerStart)} ({lockDelay}) must be at least {nameof(HighlanderOptions.LeaseDuration)} ({lease}): holders cut off by a restart may run their children that long.", nameof(HighlanderOptions.LockDelayAfterServerStart), nameof(HighlanderOptions.LeaseDuration));
        }

        if (outOfRange)
        {
            yield break;
        }

        if (options.HeartbeatInterval > TimeSpan.Zero && options.HeartbeatInterval * 3 > lease)
        {
            yield return Problem($"{nameof(HighlanderOptions.HeartbeatInterval)} ({options.HeartbeatInterval}) must be well below {nameof(HighlanderOptions.LeaseDuration)} ({lease}): at most a third of it.", nameof(HighlanderOptions.HeartbeatInterval), nameof(HighlanderOptions.LeaseDuration));
        }

        if (options.SpreadGrace is { } grace && (grace <= TimeSpan.Zero || grace > lease))
        {
            yield return Problem($"{nameof(HighlanderOptions.SpreadGrace)} ({grace}) must be positive and at most {nameof(HighlanderOptions.LeaseDuration)} ({lease}): a free singleton waits up to that long for a node below its share before any node takes it.", nameof(HighlanderOptions.SpreadGrace), nameof(HighlanderOptions.LeaseDuration));
        }

        if (options.SpreadSettleTime is { } settle && (settle < TimeSpan.Zero || settle > MaxLease))
        {
            yield return Problem($"{nameof(HighlanderOptions.SpreadSettleTime)} must be between 0 and 1 day (it is {settle}).", nameof(HighlanderOptions.SpreadSettleTime));
        }

        var budget = (options.HeartbeatInterval * 2) + options.StopTimeout + options.SafetyMargin;
        if (budget > lease)
        {
            yield return Problem($"The lease does not fit: 2 × {nameof(HighlanderOptions.HeartbeatInterval)} ({options.HeartbeatInterval}) + {nameof(HighlanderOptions.StopTimeout)} ({options.StopTimeout}) + {nameof(HighlanderOptions.SafetyMargin)} ({options.SafetyMargin}) = {budget} exceeds {nameof(HighlanderOptions.LeaseDuration)} ({lease}). A child must be stopped before the server may free the lock; shorten the stop timeout or lengthen the lease.", nameof(HighlanderOptions.HeartbeatInterval), nameof(HighlanderOptions.StopTimeout), nameof(HighlanderOptions.SafetyMargin), nameof(HighlanderOptions.LeaseDuration));
        }

        static OptionProblem Problem(string message, params string[] involved) => new(involved, message);
    }
}
