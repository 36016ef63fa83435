
namespace HighlanderPG.Groups;

/// <summary>
/// One registered singleton group: its declared members and strategy, and its members' state on this node, which
/// outlives each run of the group (restarts and last errors are counted across runs, like a singleton's).
/// </summary>
internal sealed class SingletonGroup
{
    private readonly Lock _gate = new();
    private readonly MemberState[] _states;
    private int _restarts;
    private TimeProvider _time = TimeProvider.System;
    private string _nodeId = "";
    private Action<GroupMemberChanged>? _publish;

    public SingletonGroup(string name, IReadOnlyList<GroupMemberSpec> members, GroupStrategy strategy, int maxRestarts, TimeSpan restartWindow)
    {
        Name = name;
        Members = members;
        Strategy = strategy;
        MaxRestarts = maxRestarts;
        RestartWindow = restartWindow;
        _states = members.Select(_ => new MemberState()).ToArray();
    }

    public string Name { get; }

    public IReadOnlyList<GroupMemberSpec> Members { get; }

    public GroupStrategy Strategy { get; }

    public int MaxRestarts { get; }

    public TimeSpan RestartWindow { get; }

    public TimeProvider Time => _time;

    /// <summary>Called by the node when it starts: where member changes go, and its clock.</summary>
    public void Attach(string nodeId, TimeProvider time, Action<GroupMemberChanged> publish)
    {
        lock (_gate)
        {
            _nodeId = nodeId;
            _time = time;
            _publish = publish;
            var now = time.GetUtcNow();
            foreach (var state in _states)
            {
                state.Since = now;
            }
        }
    }

    public void SetState(int index, GroupMemberState state, string reason, long? epoch, string? error = null)
    {
        GroupMemberChanged change;
        Action<GroupMemberChanged>? publish;
        lock (_gate)
        {
            var member = _states[index];
            if (error is not null)
            {
                member.LastError = error;
            }

            if (member.State == state && error is null)
            {
                return;
            }

            change = new GroupMemberChanged(Name, Members[index].Name, member.State, state, _time.GetUtcNow(), reason, _nodeId, epoch, error);
            member.State = state;
            member.Since = change.At;
            publish = _publish;
        }

        publish?.Invoke(change);
    }

    public void CountMemberRestart(int index)
    {
        lock (_gate)
        {
            _states[index].Restarts++;
        }
    }

    public void CountGroupRestart()
    {
        lock (_gate)
        {
            _restarts++;
        }
    }

    public SingletonGroupStatus GetStatus(SingletonStatus? singleton)
    {
        lock (_gate)
        {
            var members = Members.Select((m, i) => new GroupMemberStatus(m.Name, m.Restart, m.ServiceType, _states[i].State, _states[i].Since, _states[i].Restarts, _states[i].LastError)).ToList();
            return new SingletonGroupStatus(Name, Strategy, MaxRestarts, RestartWindow, _restarts, singleton, members);
        }
    }

    private sealed class MemberState
    {
        public GroupMemberState State { get; set; }

        public DateTimeOffset Since { get; set; }

        public int Restarts { get; set; }

        public string? LastError { get; set; }
    }
}
