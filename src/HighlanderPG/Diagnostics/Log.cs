using Microsoft.Extensions.Logging;

namespace HighlanderPG.Diagnostics;

/// <summary>HighlanderPG's log messages. Event ids are stable: alerting may depend on them.</summary>
internal static partial class Log
{
    [LoggerMessage(EventId = HighlanderEventIds.NodeStarting, Level = LogLevel.Information, Message = "HighlanderPG node {NodeId} starting with {SingletonCount} singleton(s) on {DataSource}, lease {Lease}")]
    public static partial void NodeStarting(ILogger logger, string nodeId, int singletonCount, string dataSource, TimeSpan lease);

    [LoggerMessage(EventId = HighlanderEventIds.Connected, Level = LogLevel.Information, Message = "Lock session connected to {DataSource} (backend pid {BackendPid}, PostgreSQL {ServerVersion})")]
    public static partial void Connected(ILogger logger, string dataSource, int backendPid, string serverVersion);

    [LoggerMessage(EventId = HighlanderEventIds.ConnectFailed, Level = LogLevel.Warning, Message = "Cannot connect the lock session to {DataSource}; no singleton runs on this node until it can. Retrying in {RetryIn}")]
    public static partial void ConnectFailed(ILogger logger, Exception exception, string dataSource, TimeSpan retryIn);

    [LoggerMessage(EventId = HighlanderEventIds.SessionLost, Level = LogLevel.Warning, Message = "Lock session lost: {Reason}. Every singleton this node led is stopped")]
    public static partial void SessionLost(ILogger logger, Exception? exception, string reason);

    [LoggerMessage(EventId = HighlanderEventIds.Refused, Level = LogLevel.Error, Message = "The server at {DataSource} cannot be used safely: {Reason}. Retrying in {RetryIn}")]
    public static partial void Refused(ILogger logger, string dataSource, string reason, TimeSpan retryIn);

    [LoggerMessage(EventId = HighlanderEventIds.LockDelay, Level = LogLevel.Information, Message = "The server started {Uptime} ago; no lock is taken for another {Delay} so that holders cut off by the restart have stopped (lock-delay)")]
    public static partial void LockDelay(ILogger logger, TimeSpan uptime, TimeSpan delay);

    [LoggerMessage(EventId = HighlanderEventIds.ServerClockStepped, Level = LogLevel.Warning, Message = "The server's wall clock read ahead of this node's clock by about {Step} (a forward step, or a reply too slow to tell): PostgreSQL may have ended idle sessions early, freeing locks whose holders still run their children; no lock is taken for {Delay} (lock-delay)")]
    public static partial void ServerClockStepped(ILogger logger, TimeSpan step, TimeSpan delay);

    [LoggerMessage(EventId = HighlanderEventIds.ServerChanged, Level = LogLevel.Warning, Message = "The lock session reached {Change}: holders cut off on the previous server may still run their children; no lock is taken for {Delay} (lock-delay). Previous server: {Previous}; this one: {Current}")]
    public static partial void ServerChanged(ILogger logger, string change, string previous, string current, TimeSpan delay);

    [LoggerMessage(EventId = HighlanderEventIds.ServerIdentityPartial, Level = LogLevel.Information, Message = "The server's system identifier and timeline cannot be read by this role ({Reason}); a failover is recognised by the server's start time and address only")]
    public static partial void ServerIdentityPartial(ILogger logger, string reason);

    [LoggerMessage(EventId = HighlanderEventIds.LeaseExpiring, Level = LogLevel.Error, Message = "Lease about to expire (no answer from the server since {SinceAck} ago): stopping every child of this node before the server may free its locks")]
    public static partial void LeaseExpiring(ILogger logger, TimeSpan sinceAck);

    [LoggerMessage(EventId = HighlanderEventIds.SessionPooler, Level = LogLevel.Warning, Message = "Connected through a pooler (backend pid {ServerPid} differs from the connection's {ClientPid}); allowed because AllowSessionModePooler is set")]
    public static partial void SessionPooler(ILogger logger, int serverPid, int clientPid);

    [LoggerMessage(EventId = HighlanderEventIds.WeakerMode, Level = LogLevel.Warning, Message = "Server has no idle_session_timeout (PostgreSQL {ServerVersion}); running in the weaker mode without a server-enforced lease")]
    public static partial void WeakerMode(ILogger logger, string serverVersion);

    [LoggerMessage(EventId = HighlanderEventIds.Acquired, Level = LogLevel.Information, Message = "Acquired singleton {Singleton} (key {Key}); starting its child")]
    public static partial void Acquired(ILogger logger, string singleton, long key);

    [LoggerMessage(EventId = HighlanderEventIds.Released, Level = LogLevel.Information, Message = "Released singleton {Singleton} (key {Key}) and told the other nodes: {Reason}")]
    public static partial void Released(ILogger logger, string singleton, long key, string reason);

    [LoggerMessage(EventId = HighlanderEventIds.LeadershipLost, Level = LogLevel.Warning, Message = "Lost singleton {Singleton}: {Reason}")]
    public static partial void LeadershipLost(ILogger logger, string singleton, string reason);

    [LoggerMessage(EventId = HighlanderEventIds.SteppingDown, Level = LogLevel.Information, Message = "Stepping down from singleton {Singleton}: {Reason}")]
    public static partial void SteppingDown(ILogger logger, string singleton, string reason);

    [LoggerMessage(EventId = HighlanderEventIds.Following, Level = LogLevel.Information, Message = "Singleton {Singleton} is led by {Leader}")]
    public static partial void Following(ILogger logger, string singleton, string leader);

    [LoggerMessage(EventId = HighlanderEventIds.Rehearsed, Level = LogLevel.Debug, Message = "Take-over rehearsed on a private lock (ran: {Ran}) in {Elapsed}")]
    public static partial void Rehearsed(ILogger logger, bool ran, TimeSpan elapsed);

    [LoggerMessage(EventId = HighlanderEventIds.RehearsalFailed, Level = LogLevel.Warning, Message = "The take-over rehearsal failed; the first take-over may take longer")]
    public static partial void RehearsalFailed(ILogger logger, Exception exception);

    [LoggerMessage(EventId = HighlanderEventIds.ChildStarted, Level = LogLevel.Information, Message = "Child of singleton {Singleton} started")]
    public static partial void ChildStarted(ILogger logger, string singleton);

    [LoggerMessage(EventId = HighlanderEventIds.ChildFailed, Level = LogLevel.Error, Message = "Child of singleton {Singleton} failed")]
    public static partial void ChildFailed(ILogger logger, Exception exception, string singleton);

    [LoggerMessage(EventId = HighlanderEventIds.ChildCompleted, Level = LogLevel.Information, Message = "Child of singleton {Singleton} completed ({Policy}: {Outcome})")]
    public static partial void ChildCompleted(ILogger logger, string singleton, RestartPolicy policy, string outcome);

    [LoggerMessage(EventId = HighlanderEventIds.ChildStopped, Level = LogLevel.Information, Message = "Child of singleton {Singleton} stopped in {Elapsed}")]
    public static partial void ChildStopped(ILogger logger, string singleton, TimeSpan elapsed);

    [LoggerMessage(EventId = HighlanderEventIds.Escalating, Level = LogLevel.Critical, Message = "Escalating singleton {Singleton}: {Reason}")]
    public static partial void Escalating(ILogger logger, string singleton, string reason);

    [LoggerMessage(EventId = HighlanderEventIds.CrashLoop, Level = LogLevel.Critical, Message = "Singleton {Singleton} needed more than {MaxRestarts} restarts within {Window}: {Action}")]
    public static partial void CrashLoop(ILogger logger, string singleton, int maxRestarts, TimeSpan window, CrashLoopBehavior action);

    [LoggerMessage(EventId = HighlanderEventIds.RunnerError, Level = LogLevel.Error, Message = "Supervising singleton {Singleton} failed unexpectedly; it contends again after a pause")]
    public static partial void RunnerError(ILogger logger, Exception exception, string singleton);

    [LoggerMessage(EventId = HighlanderEventIds.WaiterError, Level = LogLevel.Debug, Message = "Follower wait connection error; the heartbeat keeps polling meanwhile")]
    public static partial void WaiterError(ILogger logger, Exception exception);

    [LoggerMessage(EventId = HighlanderEventIds.RunnerStopFailed, Level = LogLevel.Error, Message = "A singleton runner failed while the node stopped")]
    public static partial void RunnerStopFailed(ILogger logger, Exception exception);

    [LoggerMessage(EventId = HighlanderEventIds.SessionStopFailed, Level = LogLevel.Error, Message = "The lock session failed while the node stopped")]
    public static partial void SessionStopFailed(ILogger logger, Exception exception);

    [LoggerMessage(EventId = HighlanderEventIds.StateChangedHandlerFailed, Level = LogLevel.Error, Message = "A StateChanged handler threw")]
    public static partial void StateChangedHandlerFailed(ILogger logger, Exception exception);

    [LoggerMessage(EventId = HighlanderEventIds.GroupMemberStarted, Level = LogLevel.Information, Message = "Member {Member} of group {Group} started")]
    public static partial void GroupMemberStarted(ILogger logger, string group, string member);

    [LoggerMessage(EventId = HighlanderEventIds.GroupMemberStopped, Level = LogLevel.Information, Message = "Member {Member} of group {Group} stopped in {Elapsed}")]
    public static partial void GroupMemberStopped(ILogger logger, string group, string member, TimeSpan elapsed);

    [LoggerMessage(EventId = HighlanderEventIds.GroupMemberFailed, Level = LogLevel.Error, Message = "Member {Member} of group {Group} failed ({Restart})")]
    public static partial void GroupMemberFailed(ILogger logger, Exception exception, string group, string member, Groups.MemberRestart restart);

    [LoggerMessage(EventId = HighlanderEventIds.GroupMemberCompleted, Level = LogLevel.Information, Message = "Member {Member} of group {Group} completed ({Restart})")]
    public static partial void GroupMemberCompleted(ILogger logger, string group, string member, Groups.MemberRestart restart);

    [LoggerMessage(EventId = HighlanderEventIds.GroupRestarting, Level = LogLevel.Warning, Message = "Group {Group} restarts {Members} after member {Member} exited ({Strategy})")]
    public static partial void GroupRestarting(ILogger logger, string group, string member, Groups.GroupStrategy strategy, string members);

    [LoggerMessage(EventId = HighlanderEventIds.GroupIntensityExceeded, Level = LogLevel.Error, Message = "Group {Group} restarted more than {MaxRestarts} times within {Window} (last: member {Member}): the group fails as a whole")]
    public static partial void GroupIntensityExceeded(ILogger logger, string group, string member, int maxRestarts, TimeSpan window);

    [LoggerMessage(EventId = HighlanderEventIds.GroupMemberStopTimeout, Level = LogLevel.Critical, Message = "Member {Member} of group {Group} did not stop within {StopTimeout}: the group steps down, so that the singleton's stop timeout and escalation apply")]
    public static partial void GroupMemberStopTimeout(ILogger logger, string group, string member, TimeSpan stopTimeout);

    [LoggerMessage(EventId = HighlanderEventIds.GroupCompleted, Level = LogLevel.Information, Message = "No member of group {Group} runs or is to be restarted: the group completed")]
    public static partial void GroupCompleted(ILogger logger, string group);

    [LoggerMessage(EventId = HighlanderEventIds.MemberChangedHandlerFailed, Level = LogLevel.Error, Message = "A MemberChanged handler threw")]
    public static partial void MemberChangedHandlerFailed(ILogger logger, Exception exception);

    [LoggerMessage(EventId = HighlanderEventIds.HoldOffs, Level = LogLevel.Information, Message = "Hold-offs for this node: {Drain}, {Keys} singleton key(s) held off by a step-down; stepping down from {Covered} it leads")]
    private static partial void HoldOffsCore(ILogger logger, string drain, int keys, int covered);

    public static void HoldOffs(ILogger logger, TimeSpan? drain, int keys, int covered) =>
        HoldOffsCore(logger, drain is { } d ? $"drained for {d}" : "not drained", keys, covered);

    [LoggerMessage(EventId = HighlanderEventIds.ControlUnavailable, Level = LogLevel.Warning, Message = "Step down / drain: the control objects in schema {Schema} cannot be created or read by this node ({Reason}); step_down and drain requests do not reach it until their owner runs the DDL (docs/operations.md)")]
    public static partial void ControlUnavailable(ILogger logger, string schema, string reason);

    [LoggerMessage(EventId = HighlanderEventIds.HoldOffStepDown, Level = LogLevel.Information, Message = "Stepping down from {Singleton}: an operator's step-down or drain holds this node off it")]
    public static partial void HoldOffStepDown(ILogger logger, string singleton);

    [LoggerMessage(EventId = HighlanderEventIds.MessagingRegistered, Level = LogLevel.Information, Message = "Messaging ready in schema {Schema}: {Count} singleton(s) registered for messages")]
    public static partial void MessagingRegistered(ILogger logger, int count, string schema);

    [LoggerMessage(EventId = HighlanderEventIds.MessagingSetupFailed, Level = LogLevel.Warning, Message = "Messaging: cannot create the tables in schema {Schema} or register this node's singletons; retrying in {RetryIn}")]
    public static partial void MessagingSetupFailed(ILogger logger, Exception exception, string schema, TimeSpan retryIn);

    [LoggerMessage(EventId = HighlanderEventIds.MessagingListenerFailed, Level = LogLevel.Warning, Message = "Messaging: the LISTEN connection failed; inboxes poll until it is back (retry in {RetryIn})")]
    public static partial void MessagingListenerFailed(ILogger logger, Exception exception, TimeSpan retryIn);

    [LoggerMessage(EventId = HighlanderEventIds.MessageFailed, Level = LogLevel.Warning, Message = "Messaging: message {MessageId} to singleton {Singleton} failed (delivery {Delivery}); it is given back")]
    public static partial void MessageFailed(ILogger logger, Exception exception, string singleton, long messageId, int delivery);

    [LoggerMessage(EventId = HighlanderEventIds.MessageDeadLettered, Level = LogLevel.Warning, Message = "Messaging: message {MessageId} to singleton {Singleton} dead-lettered after {Delivery} deliveries: {Reason}")]
    public static partial void MessageDeadLettered(ILogger logger, string singleton, long messageId, int delivery, string reason);

    [LoggerMessage(EventId = HighlanderEventIds.MessagingPurgeFailed, Level = LogLevel.Debug, Message = "Messaging: deleting old messages of singleton {Singleton} failed; retried later")]
    public static partial void MessagingPurgeFailed(ILogger logger, Exception exception, string singleton);

    [LoggerMessage(EventId = HighlanderEventIds.SpreadHandOver, Level = LogLevel.Information, Message = "Spread: handing {Count} singleton(s) over gracefully: this node leads {Leading}, its share is {Share} of {Live} live node(s), and a node below its share is settled")]
    public static partial void SpreadHandOver(ILogger logger, int count, int leading, int share, int live);

    [LoggerMessage(EventId = HighlanderEventIds.PreferenceHandOver, Level = LogLevel.Information, Message = "Spread: handing singleton {Singleton} over gracefully to a preferred node that is live")]
    public static partial void PreferenceHandOver(ILogger logger, string singleton);

    [LoggerMessage(EventId = HighlanderEventIds.PlacementMembers, Level = LogLevel.Debug, Message = "Spread: {Live} live node(s), share {Share}: {Members}")]
    public static partial void PlacementMembers(ILogger logger, int live, int share, string members);
}
