using System.Diagnostics;

namespace HighlanderPG.Diagnostics;

/// <summary>
/// HighlanderPG's one <see cref="ActivitySource"/> (<see cref="HighlanderDiagnostics.ActivitySourceName"/>): a short span
/// for each leadership event a user wants to find in a trace, next to the log message of the same event.
/// </summary>
/// <remarks>
/// Each span is the root of its own trace: a node's leadership is not part of whatever request happened to start the host
/// (the ambient <see cref="Activity.Current"/> flows into the runners' tasks). Nothing is built unless someone listens.
/// </remarks>
internal static class HighlanderActivities
{
    public const string Acquired = "highlander.acquired";
    public const string Released = "highlander.released";
    public const string SteppingDown = "highlander.stepping_down";
    public const string LeadershipLost = "highlander.leadership_lost";
    public const string Escalating = "highlander.escalating";

    public const string SingletonTag = "highlander.singleton";
    public const string EpochTag = "highlander.fencing.epoch";
    public const string NodeTag = "highlander.node";
    public const string KeyTag = "highlander.key";
    public const string ReasonTag = "highlander.reason";

    private static readonly ActivitySource Source = new(HighlanderDiagnostics.ActivitySourceName, typeof(HighlanderActivities).Assembly.GetName().Version?.ToString());

    /// <summary>This node acquired the singleton's lock (and is about to start its child).</summary>
    public static void OnAcquired(string node, string singleton, long key, long? epoch) => Emit(Acquired, node, singleton, key, epoch, reason: null, ActivityStatusCode.Unset);

    /// <summary>This node released the lock to the others (a hand-over), after its child was gone.</summary>
    public static void OnReleased(string node, string singleton, long key, long? epoch, string reason) => Emit(Released, node, singleton, key, epoch, reason, ActivityStatusCode.Unset);

    /// <summary>A step-down was asked for: the child is being stopped before the release.</summary>
    public static void OnSteppingDown(string node, string singleton, long key, long? epoch, string reason) => Emit(SteppingDown, node, singleton, key, epoch, reason, ActivityStatusCode.Unset);

    /// <summary>The lease was lost other than by a release.</summary>
    public static void OnLeadershipLost(string node, string singleton, long key, long? epoch, string reason) => Emit(LeadershipLost, node, singleton, key, epoch, reason, ActivityStatusCode.Error);

    /// <summary>A child could not be stopped in time.</summary>
    public static void OnEscalating(string node, string singleton, long key, long? epoch, string reason) => Emit(Escalating, node, singleton, key, epoch, reason, ActivityStatusCode.Error);

    private static void Emit(string name, string node, string singleton, long key, long? epoch, string? reason, ActivityStatusCode status)
    {
        if (!Source.HasListeners())
        {
            return;
        }

        var ambient = Activity.Current;
        Activity.Current = null;
        try
        {
            using var activity = Source.StartActivity(name, ActivityKind.Internal);
            if (activity is null)
            {
                return;
            }

            activity.SetTag(SingletonTag, singleton);
            activity.SetTag(KeyTag, key);
            if (epoch is { } e)
            {
                activity.SetTag(EpochTag, e);
            }

            activity.SetTag(NodeTag, node);
            if (reason is not null)
            {
                activity.SetTag(ReasonTag, reason);
            }

            if (status == ActivityStatusCode.Error)
            {
                activity.SetStatus(status, reason);
            }
        }
        finally
        {
            Activity.Current = ambient;
        }
    }
}
