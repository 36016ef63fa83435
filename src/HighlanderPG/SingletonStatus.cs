namespace HighlanderPG;

/// <summary>The state of one cluster singleton on this node.</summary>
public enum SingletonState
{
    /// <summary>Another node (or nobody yet) holds the lock; this node waits for it.</summary>
    Following,

    /// <summary>This node holds the lock and is starting its child.</summary>
    Starting,

    /// <summary>This node holds the lock and its child runs.</summary>
    Leading,

    /// <summary>This node's child is being stopped (step-down, shutdown, child exit, or lease loss).</summary>
    Stopping,

    /// <summary>This node has no working database session: no child runs, and it keeps reconnecting.</summary>
    Disconnected,

    /// <summary>The child completed and its restart policy says not to restart: this node keeps the lock without a child.</summary>
    Completed,

    /// <summary>The singleton crash-looped and this node gave up on it (<see cref="CrashLoopBehavior.GiveUp"/>).</summary>
    Faulted,

    /// <summary>The node has stopped.</summary>
    Stopped,
}

/// <summary>The node holding a singleton's lock, as seen in <c>pg_locks</c> and <c>pg_stat_activity</c>.</summary>
public sealed class LeaderInfo
{
    internal LeaderInfo(string? nodeId, int backendPid, string? applicationName, string? clientAddress, DateTimeOffset? sessionStarted)
    {
        NodeId = nodeId;
        BackendPid = backendPid;
        ApplicationName = applicationName;
        ClientAddress = clientAddress;
        SessionStarted = sessionStarted;
    }

    /// <summary>The holder's node id, when it is a HighlanderPG node (from its <c>application_name</c>).</summary>
    public string? NodeId { get; }

    /// <summary>The holder session's backend process id.</summary>
    public int BackendPid { get; }

    /// <summary>The holder session's <c>application_name</c>.</summary>
    public string? ApplicationName { get; }

    /// <summary>The holder's client address, when connected over TCP.</summary>
    public string? ClientAddress { get; }

    /// <summary>When the holder's session started (server clock).</summary>
    public DateTimeOffset? SessionStarted { get; }

    /// <inheritdoc/>
    public override string ToString() => $"{NodeId ?? ApplicationName ?? "?"} (backend {BackendPid}{(ClientAddress is null ? "" : " at " + ClientAddress)})";
}

/// <summary>A snapshot of one singleton on this node, like OTP's <c>which_children</c>.</summary>
public sealed class SingletonStatus
{
    internal SingletonStatus(string name, long key, SingletonState state, DateTimeOffset since, int restarts, string? lastError, long? fencingEpoch, LeaderInfo? leader)
    {
        Name = name;
        Key = key;
        State = state;
        Since = since;
        Restarts = restarts;
        LastError = lastError;
        FencingEpoch = fencingEpoch;
        Leader = leader;
    }

    /// <summary>The singleton's name.</summary>
    public string Name { get; }

    /// <summary>Its advisory lock key.</summary>
    public long Key { get; }

    /// <summary>Its state on this node.</summary>
    public SingletonState State { get; }

    /// <summary>When it entered that state.</summary>
    public DateTimeOffset Since { get; }

    /// <summary>How many times its child was restarted on this node.</summary>
    public int Restarts { get; }

    /// <summary>The last error (child failure, connection error, lease loss), if any.</summary>
    public string? LastError { get; }

    /// <summary>Its fencing epoch while this node leads it, when fencing is on.</summary>
    public long? FencingEpoch { get; }

    /// <summary>Who holds its lock, when known: this node while it leads, otherwise the last holder seen.</summary>
    public LeaderInfo? Leader { get; }

    /// <inheritdoc/>
    public override string ToString() => $"{Name}: {State} since {Since:O}, restarts {Restarts}, leader {Leader?.NodeId ?? "none"}";
}

/// <summary>
/// A change of a singleton on this node: of its state, or (with <see cref="Previous"/> equal to <see cref="Current"/>)
/// of the leader this node follows.
/// </summary>
public sealed class SingletonStateChanged : EventArgs
{
    internal SingletonStateChanged(string name, SingletonState previous, SingletonState current, DateTimeOffset at, string reason, string nodeId, LeaderInfo? leader)
    {
        Name = name;
        Previous = previous;
        Current = current;
        At = at;
        Reason = reason;
        NodeId = nodeId;
        Leader = leader;
    }

    /// <summary>The singleton.</summary>
    public string Name { get; }

    /// <summary>Its state before.</summary>
    public SingletonState Previous { get; }

    /// <summary>Its state now.</summary>
    public SingletonState Current { get; }

    /// <summary>When it changed.</summary>
    public DateTimeOffset At { get; }

    /// <summary>Why, in words.</summary>
    public string Reason { get; }

    /// <summary>This node.</summary>
    public string NodeId { get; }

    /// <summary>Who leads the singleton now, when known.</summary>
    public LeaderInfo? Leader { get; }

    /// <inheritdoc/>
    public override string ToString() => $"{Name}: {Previous} -> {Current} ({Reason})";
}

/// <summary>
/// What a singleton's child knows about its leadership. Inject it into the child's constructor; each
/// incarnation of the child gets its own.
/// </summary>
public interface ILeadership
{
    /// <summary>The singleton's name.</summary>
    string Name { get; }

    /// <summary>This node.</summary>
    string NodeId { get; }

    /// <summary>The singleton's advisory lock key.</summary>
    long Key { get; }

    /// <summary>The namespace the singleton's name lives in.</summary>
    string Namespace { get; }

    /// <summary>The schema of the fencing table, for <see cref="Fencing.FencingGuard"/>.</summary>
    string FencingSchema { get; }

    /// <summary>When this node took the lock.</summary>
    DateTimeOffset AcquiredAt { get; }

    /// <summary>The fencing epoch of this acquisition, when fencing is on; otherwise <see langword="null"/>.</summary>
    long? FencingEpoch { get; }

    /// <summary>
    /// Fires when this node is about to stop leading: the lease is being lost, the session broke, the node
    /// steps down or shuts down. Stop writing when it fires.
    /// </summary>
    CancellationToken LostToken { get; }
}

/// <summary>The node's tiny supervisor: ask it about its singletons, watch them, make one step down.</summary>
public interface IClusterSingletons
{
    /// <summary>This node's id.</summary>
    string NodeId { get; }

    /// <summary>Every singleton on this node (like <c>which_children</c>).</summary>
    IReadOnlyList<SingletonStatus> GetAll();

    /// <summary>One singleton, or <see langword="null"/> when no singleton has that name.</summary>
    SingletonStatus? Get(string name);

    /// <summary>
    /// Raised on every state change of a singleton on this node, in order, from a background task of the node's own
    /// (a slow handler delays later events, never the engine).
    /// </summary>
    event EventHandler<SingletonStateChanged>? StateChanged;

    /// <summary>
    /// State and leader changes as they happen, until <paramref name="cancellationToken"/> fires or the node stops.
    /// The subscription starts when this method is called, so nothing between the call and the first read is missed.
    /// </summary>
    IAsyncEnumerable<SingletonStateChanged> WatchAsync(CancellationToken cancellationToken = default);

    /// <summary>
    /// Makes this node step down from <paramref name="name"/> if it leads it: stop the child, release the lock,
    /// tell the followers at once, then leave it to others for <see cref="HighlanderOptions.StepDownHoldOff"/>.
    /// Completes when the lock is released (or at once when this node does not lead it).
    /// </summary>
    Task StepDownAsync(string name, CancellationToken cancellationToken = default);

    /// <summary>
    /// Every singleton group on this node, with its members in declared order (like <c>which_children</c>) and their
    /// counts (like <c>count_children</c>).
    /// </summary>
    IReadOnlyList<Groups.SingletonGroupStatus> GetGroups();

    /// <summary>One singleton group, or <see langword="null"/> when no group has that name (a plain singleton is not a group).</summary>
    Groups.SingletonGroupStatus? GetGroup(string name);

    /// <summary>
    /// Raised on every state change of a member of a singleton group on this node, in order, from a background task of
    /// the node's own. The group as a whole reports through <see cref="StateChanged"/>, like any singleton.
    /// </summary>
    event EventHandler<Groups.GroupMemberChanged>? MemberChanged;

    /// <summary>
    /// Member changes of singleton groups as they happen, until <paramref name="cancellationToken"/> fires or the node
    /// stops. The subscription starts when this method is called.
    /// </summary>
    IAsyncEnumerable<Groups.GroupMemberChanged> WatchMembersAsync(CancellationToken cancellationToken = default);
}
