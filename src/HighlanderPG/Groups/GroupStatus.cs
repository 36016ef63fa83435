namespace HighlanderPG.Groups;

/// <summary>The state of one member of a singleton group on this node.</summary>
public enum GroupMemberState
{
    /// <summary>Not running here: the group is not led by this node (or has not started the member yet).</summary>
    Stopped = 0,

    /// <summary>Its <c>StartAsync</c> runs.</summary>
    Starting = 1,

    /// <summary>It runs.</summary>
    Running = 2,

    /// <summary>It is being stopped (the group stops, or a restart stops it first).</summary>
    Stopping = 3,

    /// <summary>It completed normally and its restart type says not to restart it (transient, temporary).</summary>
    Completed = 4,

    /// <summary>It failed and its restart type says not to restart it (temporary).</summary>
    Failed = 5,
}

/// <summary>A snapshot of one member of a singleton group on this node (an entry of OTP's <c>which_children</c>).</summary>
public sealed class GroupMemberStatus
{
    internal GroupMemberStatus(string name, MemberRestart restart, Type serviceType, GroupMemberState state, DateTimeOffset since, int restarts, string? lastError)
    {
        Name = name;
        Restart = restart;
        ServiceType = serviceType;
        State = state;
        Since = since;
        Restarts = restarts;
        LastError = lastError;
    }

    /// <summary>The member's name within its group.</summary>
    public string Name { get; }

    /// <summary>Its restart type.</summary>
    public MemberRestart Restart { get; }

    /// <summary>Its hosted service type (an internal delegate wrapper for delegate members).</summary>
    public Type ServiceType { get; }

    /// <summary>Its state on this node.</summary>
    public GroupMemberState State { get; }

    /// <summary>When it entered that state.</summary>
    public DateTimeOffset Since { get; }

    /// <summary>How many times the group restarted it on this node (its own failures and its siblings' restarts alike).</summary>
    public int Restarts { get; }

    /// <summary>Its last failure (a start failure or an exception), if any.</summary>
    public string? LastError { get; }

    /// <inheritdoc/>
    public override string ToString() => $"{Name}: {State} since {Since:O}, restarts {Restarts}{(LastError is null ? "" : ", last error " + LastError)}";
}

/// <summary>
/// A snapshot of one singleton group on this node: the singleton that holds its lock, and its members in declared order
/// (OTP's <c>which_children</c>) with their counts (OTP's <c>count_children</c>).
/// </summary>
public sealed class SingletonGroupStatus
{
    internal SingletonGroupStatus(string name, GroupStrategy strategy, int maxRestarts, TimeSpan restartWindow, int restarts, SingletonStatus? singleton, IReadOnlyList<GroupMemberStatus> members)
    {
        Name = name;
        Strategy = strategy;
        MaxRestarts = maxRestarts;
        RestartWindow = restartWindow;
        Restarts = restarts;
        Singleton = singleton;
        Members = members;
    }

    /// <summary>The group's name (its singleton's name).</summary>
    public string Name { get; }

    /// <summary>Its restart strategy.</summary>
    public GroupStrategy Strategy { get; }

    /// <summary>Its restart intensity: at most this many restarts within <see cref="RestartWindow"/>.</summary>
    public int MaxRestarts { get; }

    /// <summary>The window of its restart intensity.</summary>
    public TimeSpan RestartWindow { get; }

    /// <summary>How many restarts (strategy actions, as counted against the intensity) it made on this node.</summary>
    public int Restarts { get; }

    /// <summary>The singleton that holds the group's lock (state, leader, fencing epoch), when the node has started.</summary>
    public SingletonStatus? Singleton { get; }

    /// <summary>The members in declared order.</summary>
    public IReadOnlyList<GroupMemberStatus> Members { get; }

    /// <summary>How many members are declared (OTP's <c>specs</c>).</summary>
    public int Specs => Members.Count;

    /// <summary>How many members run code on this node now: starting, running or stopping (OTP's <c>active</c>).</summary>
    public int Active => Members.Count(m => m.State is GroupMemberState.Starting or GroupMemberState.Running or GroupMemberState.Stopping);

    /// <summary>How many members run on this node now (started and not being stopped).</summary>
    public int Running => Members.Count(m => m.State == GroupMemberState.Running);

    /// <inheritdoc/>
    public override string ToString() => $"{Name} ({Strategy}): {Singleton?.State.ToString() ?? "not started"}, {Running} of {Specs} member(s) running, restarts {Restarts}";
}

/// <summary>A change of one member of a singleton group on this node.</summary>
public sealed class GroupMemberChanged : EventArgs
{
    internal GroupMemberChanged(string group, string member, GroupMemberState previous, GroupMemberState current, DateTimeOffset at, string reason, string nodeId, long? fencingEpoch, string? error)
    {
        Group = group;
        Member = member;
        Previous = previous;
        Current = current;
        At = at;
        Reason = reason;
        NodeId = nodeId;
        FencingEpoch = fencingEpoch;
        Error = error;
    }

    /// <summary>The group (its singleton's name).</summary>
    public string Group { get; }

    /// <summary>The member.</summary>
    public string Member { get; }

    /// <summary>Its state before.</summary>
    public GroupMemberState Previous { get; }

    /// <summary>Its state now.</summary>
    public GroupMemberState Current { get; }

    /// <summary>When it changed.</summary>
    public DateTimeOffset At { get; }

    /// <summary>Why, in words.</summary>
    public string Reason { get; }

    /// <summary>This node.</summary>
    public string NodeId { get; }

    /// <summary>The fencing epoch of the group's leadership on this node, when fencing is on.</summary>
    public long? FencingEpoch { get; }

    /// <summary>The member's failure, when this change is one.</summary>
    public string? Error { get; }

    /// <inheritdoc/>
    public override string ToString() => $"{Group}/{Member}: {Previous} -> {Current} ({Reason})";
}
