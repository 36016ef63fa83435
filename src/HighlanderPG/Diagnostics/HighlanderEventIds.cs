namespace HighlanderPG.Diagnostics;

/// <summary>
/// The event ids of every message HighlanderPG logs (category <c>HighlanderPG</c>) and of the <c>highlander</c> command
/// line's own messages. They are stable: alerting, tests and tools match these constants, never message text.
/// </summary>
/// <remarks>
/// Ranges: 1000-1099 the lock session, 1100-1199 leadership, 1200-1299 children, 1300-1399 escalation and supervision,
/// 1400-1499 the follower waiter, 1500-1599 the node, 2000-2099 the CLI's command child, 2100-2199 the CLI's run host.
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

    /// <summary>CLI: the node contends for its singleton.</summary>
    public const int RunContending = 2100;

    /// <summary>CLI: the node stepped down and stopped.</summary>
    public const int RunSteppedDown = 2101;

    /// <summary>CLI: <c>--once</c>: the command ran once and the lock was released.</summary>
    public const int RunOnceDone = 2102;
}
