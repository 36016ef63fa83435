using HighlanderPG.Diagnostics;
using HighlanderPG.Placement;
using Npgsql;

namespace HighlanderPG.Leasing;

/// <summary>
/// The spread placement on the lock session (docs/lease-protocol.md, "Placement"): joining the namespace's members,
/// reading them (at most once per heartbeat, and before the next try after a holder went away), splitting each try by
/// the share, and asking runners above their share or not preferred to hand over. Under <see cref="SingletonPlacement.FirstComer"/>
/// none of it runs.
/// </summary>
internal sealed partial class LockSession
{
    private SpreadView? _view;
    private int _joinedGeneration = -1;
    private long _joinedAt;
    private int? _lastBatchDeficit; // the deficit of the members below their share when the last batch was handed over
    private int _handOverBackoff; // batches in a row that did not lessen it
    private const int MaxHandOverBackoff = 6; // the settle time x 2^5 at the most
    private bool _joining;
    private long _nextMembersRead = long.MinValue;
    private long _nextHandOverPlan = long.MinValue;
    private int _registered;
    private Func<long, TimeSpan, Task>? _handOver;
    private Dictionary<long, string> _names = [];

    private bool Spread => _options.Placement == SingletonPlacement.Spread;

    /// <summary>
    /// Sets up the spread placement: the node's singletons (key, name, preferred node patterns), and how to make one of
    /// them step down gracefully with a hold-off (its runner's <c>StepDownAsync</c>). Called once, before the session runs.
    /// </summary>
    public void ConfigurePlacement(IReadOnlyList<(long Key, string Name, IReadOnlyList<string> Preferred)> singletons, Func<long, TimeSpan, Task> handOver)
    {
        _registered = singletons.Count;
        _handOver = handOver;
        _names = singletons.ToDictionary(s => s.Key, s => s.Name);
        foreach (var (key, _, preferred) in singletons)
        {
            _ledger.SetPreferred(key, preferred);
        }
    }

    /// <summary>
    /// The node is stopping: it leaves the members before its singletons are released (the next round trip), so that the
    /// others count it out when they see its releases, and take them at once by their new share instead of waiting the grace.
    /// </summary>
    public void LeavePlacement()
    {
        if (Spread)
        {
            _leaving = true;
            Wake();
        }
    }

    private volatile bool _leaving;
    private bool _left;

    /// <summary>Whether the members must be read (or left) before anything else: a new session, a holder gone, a heartbeat's time, a stop.</summary>
    private bool MembersDue(long now) =>
        Spread && !_left && (_leaving || (!_outForDrain && _joinedGeneration != _ledger.Generation) || now >= _nextMembersRead || _ledger.MembersStale || _ledger.IsDrained != _outForDrain);

    private bool _outForDrain; // left the members while an operator's drain holds every key off (docs/lease-protocol.md, "Placement")

    /// <summary>When the loop must wake for the placement: the next membership read or the end of a deferred key's grace.</summary>
    private long PlacementWakeAt() => Spread ? Math.Min(_nextMembersRead, _ledger.NextGraceEnd) : long.MaxValue;

    /// <summary>
    /// Joins the members in a new session (a shared lock on the namespace's membership key) and holds every try back for the
    /// grace (longer while others are still joining, see <see cref="LeaseTimings.SpreadJoinWindowMax"/>), so that nodes
    /// started together have all joined before any computes its share; then reads the members (this
    /// read also renews the lease, like a heartbeat) and, at most once per heartbeat, plans the hand-overs.
    /// </summary>
    private async Task<long> RefreshMembersAsync(NpgsqlConnection connection, SessionIo session)
    {
        var sent = _time.GetTimestamp();
        var key = Membership.Key(_options.Namespace);
        if (_leaving)
        {
            _left = true;
            if (_joinedGeneration == _ledger.Generation)
            {
                await RoundTripAsync(session, () => Membership.LeaveAsync(connection, key)).ConfigureAwait(false);
            }

            return sent + Delta(_timings.Heartbeat);
        }

        var drained = _ledger.IsDrained;
        if (drained && !_outForDrain)
        {
            // Drained: counted out, so that the others take its singletons by their share at once, not after the grace.
            _outForDrain = true;
            if (_joinedGeneration == _ledger.Generation)
            {
                await RoundTripAsync(session, () => Membership.LeaveAsync(connection, key)).ConfigureAwait(false);
            }

            _joinedGeneration = -1;
        }
        else if (!drained && _outForDrain)
        {
            _outForDrain = false; // undrained: joins again below, like a new session
        }

        if (!_outForDrain && _joinedGeneration != _ledger.Generation)
        {
            await RoundTripAsync(session, () => Membership.JoinAsync(connection, key)).ConfigureAwait(false);
            _joinedGeneration = _ledger.Generation;
            _joinedAt = _time.GetTimestamp();
            _joining = true;
            var joinEnds = _joinedAt + Delta(_timings.SpreadGrace);
            _lockDelayUntil = Math.Max(_lockDelayUntil, joinEnds);
            _nextMembersRead = joinEnds;
            _nextHandOverPlan = joinEnds;
        }

        _ledger.MembersStale = false;
        var (members, pid, serverTime) = await RoundTripAsync(session, () => Membership.ReadAsync(connection, key)).ConfigureAwait(false);
        CheckPid(pid);
        ObserveServerClock(serverTime, sent);
        var view = new SpreadView(_options.NodeId, _backendPid, members, _timings.SpreadSettle);
        if (!view.SameMembers(_view))
        {
            Log.PlacementMembers(_logger, view.Live, view.Share(_registered), view.Describe());
        }

        _view = view;
        var now = _time.GetTimestamp();
        if (_joining && now >= _lockDelayUntil)
        {
            // The join window ends; while other members are still joining (one joined within the grace), it is extended
            // by a grace, up to SpreadJoinWindowMax in all: nodes started one after another then all count each other
            // before any takes its share. It holds back this session's own tries only.
            if (view.Others.Any(m => m.Age is { } age && age < _timings.SpreadGrace) && now + Delta(_timings.SpreadGrace) <= _joinedAt + Delta(_timings.SpreadJoinWindowMax))
            {
                _lockDelayUntil = now + Delta(_timings.SpreadGrace);
                _nextMembersRead = _lockDelayUntil;
                _nextHandOverPlan = _lockDelayUntil;
            }
            else
            {
                _joining = false;
            }
        }

        _nextMembersRead = Math.Max(_nextMembersRead, sent + Delta(_timings.Heartbeat));
        if (_joining)
        {
            // The first tries, at the join window's end, go with a fresh view (the grace may be shorter than the heartbeat).
            _nextMembersRead = Math.Min(_nextMembersRead, _lockDelayUntil);
        }

        if (now >= _nextHandOverPlan && now >= _lockDelayUntil && !_outForDrain)
        {
            _nextHandOverPlan = now + Delta(_timings.Heartbeat);
            PlanHandOvers(view, now);
        }

        return sent + Delta(_timings.Heartbeat);
    }

    /// <summary>
    /// Asks the runners of the singletons this node should give up (<see cref="SpreadPlanner.HandOvers"/>) to step down,
    /// with the grace as their hold-off; never while an earlier hand-over is still under way (a rate limit: at most one
    /// batch per heartbeat, each sized to the members' deficit). When a batch did not lessen the deficit of the members
    /// below their share (they do not take what is handed to them: an operator's hold-off, a failing session), the next
    /// comes only after the settle time, doubled each time again up to 32 times, so that nothing goes back and forth.
    /// </summary>
    private void PlanHandOvers(SpreadView view, long now)
    {
        if (_handOver is null || _ledger.HandOverInFlight)
        {
            return;
        }

        var deficit = SpreadPlanner.Deficit(view, _registered);
        if (_lastBatchDeficit is { } before)
        {
            _lastBatchDeficit = null;
            if (deficit >= before)
            {
                _handOverBackoff = Math.Min(_handOverBackoff + 1, MaxHandOverBackoff);
                _nextHandOverPlan = now + Delta(_timings.SpreadSettle * (1 << (_handOverBackoff - 1)));
                return;
            }

            _handOverBackoff = 0;
        }

        var handOvers = SpreadPlanner.HandOvers(_ledger.HeldForPlacement(), _registered, view);
        if (handOvers.Count == 0)
        {
            return;
        }

        if (deficit > 0 && handOvers.Any(h => h.Reason == HandOverReason.Surplus))
        {
            _lastBatchDeficit = deficit;
        }

        _ledger.HandingOver(handOvers.Select(h => h.Key));
        var surplus = handOvers.Where(h => h.Reason == HandOverReason.Surplus).ToList();
        if (surplus.Count > 0)
        {
            Log.SpreadHandOver(_logger, surplus.Count, _ledger.LeadingCount, view.Share(_registered), view.Live);
        }

        foreach (var (key, reason) in handOvers)
        {
            if (reason == HandOverReason.Preference)
            {
                Log.PreferenceHandOver(_logger, _names.GetValueOrDefault(key, key.ToString(System.Globalization.CultureInfo.InvariantCulture)));
            }

            _ = StepDownQuietly(key);
        }

        async Task StepDownQuietly(long key)
        {
            try
            {
                await _handOver(key, _timings.SpreadGrace).ConfigureAwait(false);
            }
            catch (Exception ex)
            {
                Log.RunnerError(_logger, ex, _names.GetValueOrDefault(key, "?"));
            }
            finally
            {
                // Released, or the runner was not leading it (yet): either way no longer under way, so the next batch is
                // not held back by a step-down that did not happen.
                _ledger.HandOverDone(key);
            }
        }
    }

    /// <summary>What to try of <paramref name="keys"/>: all of them (first comer), or as the spread placement splits them.</summary>
    private TryPlan? PlanTries(long[] keys)
    {
        if (!Spread)
        {
            return TryPlan.Every(keys);
        }

        var view = _view ?? new SpreadView(_options.NodeId, _backendPid, [], _timings.SpreadSettle);
        return _ledger.PlanTries(keys, view, _registered, _time.GetTimestamp(), Delta(_timings.SpreadGrace));
    }
}
