using HighlanderPG.Cli.Diagnostics;
using Microsoft.Extensions.Logging;

namespace HighlanderPG.Cli.Running;

/// <summary>Everything <c>highlander run</c> was told; unset options keep the library's defaults.</summary>
internal sealed record RunSettings
{
    public required string Name { get; init; }

    /// <summary>The command and its arguments, as given after <c>--</c> (empty for a group).</summary>
    public required IReadOnlyList<string> Command { get; init; }

    /// <summary>The group (<c>--procfile</c>), instead of a command; <see langword="null"/> for a single command.</summary>
    public GroupSettings? Group { get; init; }

    public required string ConnectionString { get; init; }

    public string? Namespace { get; init; }

    public string? NodeId { get; init; }

    public TimeSpan? Lease { get; init; }

    public TimeSpan? Heartbeat { get; init; }

    public TimeSpan? StopTimeout { get; init; }

    public TimeSpan? SafetyMargin { get; init; }

    public TimeSpan? LockDelay { get; init; }

    public TimeSpan? WaitSlice { get; init; }

    public RestartPolicy? Restart { get; init; }

    public int? MaxRestarts { get; init; }

    public TimeSpan? RestartWindow { get; init; }

    public TimeSpan? RestartDelay { get; init; }

    public bool Fencing { get; init; }

    public string? FencingSchema { get; init; }

    public string? Endpoint { get; init; }

    public bool AllowWithoutServerLease { get; init; }

    public bool AllowSessionPooler { get; init; }

    public bool Once { get; init; }

    public TimeSpan Wait { get; init; }

    public LogLevel LogLevel { get; init; } = LogLevel.Information;

    public LogFormat LogFormat { get; init; } = LogFormat.Text;

    /// <summary>Maps the options onto the library's; the library validates them when the host starts.</summary>
    public void Apply(HighlanderOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.ConnectionString = ConnectionString;
        options.Namespace = Namespace ?? options.Namespace;
        options.NodeId = NodeId ?? options.NodeId;
        options.LeaseDuration = Lease ?? options.LeaseDuration;
        options.HeartbeatInterval = Heartbeat ?? options.HeartbeatInterval;
        options.StopTimeout = StopTimeout ?? options.StopTimeout;
        options.SafetyMargin = SafetyMargin ?? options.SafetyMargin;
        options.LockDelayAfterServerStart = LockDelay ?? options.LockDelayAfterServerStart;

        // Only when given: the library's default fits the lease.
        options.WaitSlice = WaitSlice ?? options.WaitSlice;
        options.Fencing = Fencing;
        options.FencingSchema = FencingSchema ?? options.FencingSchema;
        options.Endpoint = Endpoint;
        options.AllowWithoutServerLease = AllowWithoutServerLease;
        options.AllowSessionModePooler = AllowSessionPooler;
    }

    /// <summary>Maps the restart options onto the singleton's.</summary>
    public void Apply(ClusterSingletonOptions singleton)
    {
        ArgumentNullException.ThrowIfNull(singleton);
        if (Once)
        {
            // Cron mode runs the command once: whatever its exit, it is not run again (here or, while we hold the lock, elsewhere).
            singleton.RestartPolicy = RestartPolicy.Never;
            return;
        }

        // A group restarts its members itself, under the lock (GroupChild); the group as a whole ends only when no member
        // runs any more, and then, as with --restart never, this node keeps the name until it stops.
        singleton.RestartPolicy = Group is not null ? RestartPolicy.Never : Restart ?? singleton.RestartPolicy;
        singleton.MaxRestarts = MaxRestarts ?? singleton.MaxRestarts;
        singleton.RestartWindow = RestartWindow ?? singleton.RestartWindow;
        singleton.RestartDelay = RestartDelay ?? singleton.RestartDelay;
        singleton.CrashLoopBehavior = CrashLoopBehavior.StopHost;
    }
}
