namespace HighlanderPG.Diagnostics;

/// <summary>
/// The event ids of every message HighlanderPG logs (category <c>HighlanderPG</c>) and of the <c>highlander</c> command
/// line's own messages. They are stable: alerting, tests and tools match these constants, never message text.
/// </summary>
/// <remarks>
/// Ranges: 1000-1099 the lock session, 1100-1199 leadership, 1200-1299 children, 1300-1399 escalation and supervision,
/// 1400-1499 the follower waiter, 1500-1599 the node, 1600-1649 singleton groups, 1700-1749 messaging, 1770-1789 the
/// dashboard, 2000-2099 the CLI's command child, 2100-2199 the CLI's run host, 2200-2249 the CLI's group
/// (<c>highlander run --procfile</c>): its members, restarts and stops.
/// </remarks>
public static class HighlanderEventIds
{
    /// <summary>The node starts (its singletons, data source and lease).</summary>
    public const int NodeStarting = 1000;

    /// <summary>The lock session connected.</summary>
    public const int Connected = 1001;

    /// <summary>The lock session could not connect; it retries.</summary>
    public const int ConnectFailed = 1002;

    /// <summary>The lock session was lost (broken, ended by the server); every child of the node is stopped.</summary>
    public const int SessionLost = 1003;

    /// <summary>The server cannot be used safely (standby, no server lease, transaction pooler).</summary>
    public const int Refused = 1004;

    /// <summary>The server (re)started recently: no lock is taken until the lock-delay has passed.</summary>
    public const int LockDelay = 1005;

    /// <summary>The lease is about to expire (no answer from the server): every child is stopped before the server may free the locks.</summary>
    public const int LeaseExpiring = 1006;

    /// <summary>The session goes through a session-mode pooler, allowed by the options.</summary>
    public const int SessionPooler = 1007;

    /// <summary>The server has no <c>idle_session_timeout</c>: the weaker mode without a server-enforced lease.</summary>
    public const int WeakerMode = 1008;

    /// <summary>The server's wall clock was seen to step forward: no lock is taken for the lock-delay (Warning).</summary>
    public const int ServerClockStepped = 1009;

    /// <summary>
    /// The lock session reached another server than its previous session's (a promoted standby, another cluster or
    /// address): no lock is taken for the lock-delay (Warning).
    /// </summary>
    public const int ServerChanged = 1010;

    /// <summary>The server's identity could be read only in part (system identifier or timeline refused to this role); logged once per node.</summary>
    public const int ServerIdentityPartial = 1011;

    /// <summary>A singleton's lock was acquired; its child starts.</summary>
    public const int Acquired = 1100;

    /// <summary>A singleton's lock was released and the other nodes told.</summary>
    public const int Released = 1101;

    /// <summary>A singleton's leadership was lost other than by a release.</summary>
    public const int LeadershipLost = 1102;

    /// <summary>The node steps down from a singleton.</summary>
    public const int SteppingDown = 1103;

    /// <summary>A singleton is led by another node (first seen, or changed).</summary>
    public const int Following = 1104;

    /// <summary>A take-over was rehearsed on a private lock (debug): whether it ran, and how long it took.</summary>
    public const int Rehearsed = 1105;

    /// <summary>The node's own take-over rehearsal failed (a warning; the real take-over does not need it, it only runs slower the first time).</summary>
    public const int RehearsalFailed = 1106;

    /// <summary>A singleton's child started.</summary>
    public const int ChildStarted = 1200;

    /// <summary>A singleton's child failed.</summary>
    public const int ChildFailed = 1201;

    /// <summary>A singleton's child completed (its restart policy decides what follows).</summary>
    public const int ChildCompleted = 1202;

    /// <summary>A singleton's child stopped after it was told to.</summary>
    public const int ChildStopped = 1203;

    /// <summary>A child could not be stopped in time: it is escalated.</summary>
    public const int Escalating = 1300;

    /// <summary>A singleton restarted more often than its restart intensity allows.</summary>
    public const int CrashLoop = 1301;

    /// <summary>Supervising a singleton failed unexpectedly; it contends again after a pause.</summary>
    public const int RunnerError = 1302;

    /// <summary>The follower's wait connection failed; the heartbeat keeps polling meanwhile.</summary>
    public const int WaiterError = 1400;

    /// <summary>A singleton's runner failed while the node stopped.</summary>
    public const int RunnerStopFailed = 1500;

    /// <summary>The lock session failed while the node stopped.</summary>
    public const int SessionStopFailed = 1501;

    /// <summary>A <c>StateChanged</c> handler threw.</summary>
    public const int StateChangedHandlerFailed = 1502;

    /// <summary>A member of a singleton group started.</summary>
    public const int GroupMemberStarted = 1600;

    /// <summary>A member of a singleton group stopped after it was told to.</summary>
    public const int GroupMemberStopped = 1601;

    /// <summary>A member of a singleton group failed (an exception, or a failed start).</summary>
    public const int GroupMemberFailed = 1602;

    /// <summary>A member of a singleton group completed normally.</summary>
    public const int GroupMemberCompleted = 1603;

    /// <summary>A singleton group restarts members by its strategy.</summary>
    public const int GroupRestarting = 1604;

    /// <summary>A singleton group exceeded its restart intensity: it fails as a whole.</summary>
    public const int GroupIntensityExceeded = 1605;

    /// <summary>A member did not stop within the stop timeout during a restart: the group steps down so that escalation applies.</summary>
    public const int GroupMemberStopTimeout = 1606;

    /// <summary>No member of a singleton group runs or is to be restarted: the group completed.</summary>
    public const int GroupCompleted = 1607;

    /// <summary>A <c>MemberChanged</c> handler threw.</summary>
    public const int MemberChangedHandlerFailed = 1608;

    /// <summary>CLI: the command started.</summary>
    public const int CommandStarted = 2000;

    /// <summary>CLI: the command exited.</summary>
    public const int CommandExited = 2001;

    /// <summary>CLI: the command is being stopped (SIGTERM to its process group).</summary>
    public const int CommandStopping = 2002;

    /// <summary>CLI: the command did not stop within its budget after SIGTERM: SIGKILL.</summary>
    public const int CommandKilled = 2003;

    /// <summary>CLI: the command left processes running in its process group: they are stopped.</summary>
    public const int CommandLeftovers = 2004;

    /// <summary>CLI: escalation: SIGKILL to the command's process group now.</summary>
    public const int CommandEscalated = 2005;

    /// <summary>CLI: the command's next run could not be started ahead (debug; it is started the ordinary way when due).</summary>
    public const int CommandPrepareFailed = 2006;

    /// <summary>CLI: the node contends for its singleton.</summary>
    public const int RunContending = 2100;

    /// <summary>CLI: the node stepped down and stopped.</summary>
    public const int RunSteppedDown = 2101;

    /// <summary>CLI: <c>--once</c>: the command ran once and the lock was released.</summary>
    public const int RunOnceDone = 2102;

    /// <summary><c>highlander run</c>: the follower's take-over rehearsal failed (a warning; the real take-over does not need it).</summary>
    public const int RunRehearsalFailed = 2103;

    /// <summary><c>highlander run</c>: stopping, it released its name and lowered its own CPU priority for the rest of its shutdown (debug).</summary>
    public const int RunYielded = 2104;

    /// <summary>CLI group: a member started (its name is the <c>Member</c> parameter).</summary>
    public const int MemberStarted = 2200;

    /// <summary>CLI group: a member exited (by itself, or after it was told to stop).</summary>
    public const int MemberExited = 2201;

    /// <summary>CLI group: a member is being stopped (SIGTERM to its process group).</summary>
    public const int MemberStopping = 2202;

    /// <summary>CLI group: a member's process group was still there at the kill point: SIGKILL.</summary>
    public const int MemberKilled = 2203;

    /// <summary>CLI group: a member exited and left processes running in its process group: they are stopped.</summary>
    public const int MemberLeftovers = 2204;

    /// <summary>CLI group: members are restarted after a member exited (which ones depends on the strategy).</summary>
    public const int MemberRestarting = 2205;

    /// <summary>CLI group: a member exited and is not restarted (its restart policy says so).</summary>
    public const int MemberNotRestarted = 2206;

    /// <summary>CLI group: more restarts than <c>--max-restarts</c> within <c>--restart-window</c>: every member is stopped and highlander gives up.</summary>
    public const int GroupCrashLoop = 2207;

    /// <summary>CLI group: escalation: SIGKILL to every member's process group now.</summary>
    public const int GroupEscalated = 2208;

    /// <summary>CLI group: the node leads; the members start in order.</summary>
    public const int GroupStarting = 2209;

    /// <summary>CLI group: every member has been stopped, in reverse order.</summary>
    public const int GroupStopped = 2210;

    /// <summary>CLI group: no member runs any more and none is to be restarted; the name stays held until the node stops.</summary>
    public const int GroupIdle = 2211;

    /// <summary>CLI group: a member could not be started (counts as a failure with exit code 126).</summary>
    public const int MemberStartFailed = 2212;

    /// <summary>CLI: processes that left the command's (or a member's) process group were re-parented to highlander (a child subreaper): they are stopped.</summary>
    public const int EscapedStopping = 2213;

    /// <summary>CLI: processes that left the command's (or a member's) process group were still running at the kill point: SIGKILL.</summary>
    public const int EscapedKilled = 2214;

    /// <summary>Messaging: the tables are ready and this node's singletons are registered for messages.</summary>
    public const int MessagingRegistered = 1700;

    /// <summary>Messaging: creating the tables or registering the singletons failed; retried.</summary>
    public const int MessagingSetupFailed = 1701;

    /// <summary>Messaging: the node's LISTEN connection failed; inboxes poll until it is back.</summary>
    public const int MessagingListenerFailed = 1702;

    /// <summary>Messaging: processing a message failed (the handler threw); it is nacked (a failed delivery).</summary>
    public const int MessageFailed = 1703;

    /// <summary>Messaging: a message was dead-lettered after its maximum number of deliveries.</summary>
    public const int MessageDeadLettered = 1704;

    /// <summary>Messaging: deleting old acknowledged messages failed; retried later.</summary>
    public const int MessagingPurgeFailed = 1705;

    /// <summary>Dashboard (the <c>HighlanderPG.Dashboard</c> package): a read of the cluster failed; the page shows the error and the last snapshot.</summary>
    public const int DashboardReadFailed = 1770;

    /// <summary>Dashboard: a user made this node step down from a singleton through the dashboard's action.</summary>
    public const int DashboardStepDown = 1771;

    /// <summary>Dashboard: a user drained a node through the dashboard's action.</summary>
    public const int DashboardDrain = 1772;

    /// <summary>Dashboard: a user undrained a node through the dashboard's action.</summary>
    public const int DashboardUndrain = 1773;

    /// <summary>Step down / drain: this node read its hold-offs (an operator's <c>step_down</c> or <c>drain</c>): it steps down from what they cover and takes none of it until they end.</summary>
    public const int HoldOffs = 1800;

    /// <summary>Step down / drain: the control objects cannot be created or read by this node's role; requests do not reach it until a DBA runs the DDL.</summary>
    public const int ControlUnavailable = 1801;

    /// <summary>Step down / drain: a runner stepped down because of a hold-off.</summary>
    public const int HoldOffStepDown = 1802;

    /// <summary>Spread placement: this node leads more than its share while another live node leads less; it hands the surplus over gracefully.</summary>
    public const int SpreadHandOver = 1900;

    /// <summary>Spread placement: a preferred node of a singleton this node leads is live and settled; this node hands it over gracefully.</summary>
    public const int PreferenceHandOver = 1901;

    /// <summary>Spread placement: the set of live members changed (Debug).</summary>
    public const int PlacementMembers = 1902;
}
