using HighlanderPG.Placement;

namespace HighlanderPG.Leasing;

/// <summary>
/// The spread placement's bookkeeping (docs/lease-protocol.md, "Placement"): which wanted keys wait out a grace before
/// this node tries them, which it is handing over, and each key's preferred nodes. It only changes who tries when: the
/// try itself, and so never-two-at-once, is the lock's.
/// </summary>
internal sealed partial class KeyLedger
{
    private readonly Dictionary<long, long> _deferred = []; // wanted key -> when its grace ends (tried then, whatever the share)
    private readonly HashSet<long> _graceOver = []; // keys whose grace ended: tried at the next turn without the share's limit
    private readonly HashSet<long> _handingOver = []; // held keys asked to step down, not yet released
    private readonly Dictionary<long, IReadOnlyList<string>> _preferred = [];
    private bool _membersStale;

    /// <summary>The preferred-node patterns of <paramref name="key"/> (none: any node).</summary>
    public void SetPreferred(long key, IReadOnlyList<string> patterns)
    {
        lock (_gate)
        {
            _preferred[key] = patterns;
        }
    }

    /// <summary>A holder went away (or the session is new): the membership view must be read again before the next try.</summary>
    public bool MembersStale
    {
        get
        {
            lock (_gate)
            {
                return _membersStale;
            }
        }
        set
        {
            lock (_gate)
            {
                _membersStale = value;
            }
        }
    }

    /// <summary>Whether an operator's drain holds every key off now (KeyLedger.HoldOffs.cs): the node then leaves the members.</summary>
    public bool IsDrained
    {
        get
        {
            lock (_gate)
            {
                return _holdAllUntil > _holdOffClock.GetTimestamp();
            }
        }
    }

    /// <summary>How many keys this session holds (whether or not their epoch is bumped yet).</summary>
    public int LeadingCount
    {
        get
        {
            lock (_gate)
            {
                return _held.Count;
            }
        }
    }

    /// <summary>Deferred keys whose grace has ended at <paramref name="now"/> are tried at the next turn, whatever the share.</summary>
    public void EndGraces(long now)
    {
        lock (_gate)
        {
            foreach (var (key, due) in _deferred.Where(d => d.Value <= now).ToList())
            {
                _deferred.Remove(key);
                if (_wants.ContainsKey(key) && !_held.ContainsKey(key))
                {
                    _graceOver.Add(key);
                    _announced.Add(key);
                }
            }
        }
    }

    /// <summary>When the next deferred key's grace ends (<see cref="long.MaxValue"/>: none waits).</summary>
    public long NextGraceEnd
    {
        get
        {
            lock (_gate)
            {
                return _deferred.Count > 0 ? _deferred.Values.Min() : long.MaxValue;
            }
        }
    }

    /// <summary>
    /// Splits the keys to try under the spread placement: tried at once without limit, the keys this node is preferred for
    /// and those whose grace ended; tried up to the room below the share (its favourites first), the others; deferred for
    /// the grace (from <paramref name="now"/>), keys preferred for another live member, and every other key when there is
    /// no room. Returns <see langword="null"/> when nothing is to be tried now.
    /// </summary>
    public TryPlan? PlanTries(long[] candidates, SpreadView view, int registered, long now, long grace)
    {
        lock (_gate)
        {
            var all = new List<long>();
            var free = new List<long>();
            foreach (var key in candidates)
            {
                if (_graceOver.Remove(key))
                {
                    _deferred.Remove(key);
                    all.Add(key);
                }
                else if (_preferred.TryGetValue(key, out var patterns) && patterns.Count > 0 && NodePattern.MatchesAny(patterns, view.Self))
                {
                    all.Add(key);
                }
                else if (patterns is { Count: > 0 } && view.OtherMatches(patterns, settledOnly: false))
                {
                    Defer(key, now + grace);
                }
                else
                {
                    free.Add(key);
                }
            }

            var room = Math.Max(0, view.Share(registered) - _held.Count);
            if (room == 0)
            {
                foreach (var key in free)
                {
                    Defer(key, now + grace);
                }

                free.Clear();
            }

            return all.Count + free.Count == 0 ? null : new TryPlan([.. all], SpreadPlanner.FavouritesFirst(free, view), room);
        }
    }

    /// <summary>
    /// After a try: when it reached its limit, the limited keys it did not take (tried and found held, or not tried at all)
    /// wait out the grace; when it did not, every one of them was tried and found held.
    /// </summary>
    public void AfterTry(TryPlan plan, IReadOnlyCollection<long> got, long now, long grace)
    {
        lock (_gate)
        {
            foreach (var key in got)
            {
                _deferred.Remove(key);
                _graceOver.Remove(key);
            }

            var taken = got.ToHashSet();
            if (plan.Limited.Count(taken.Contains) >= plan.Limit)
            {
                foreach (var key in plan.Limited.Where(k => !taken.Contains(k)))
                {
                    Defer(key, now + grace);
                }
            }
        }
    }

    private void Defer(long key, long until)
    {
        // An earlier deferral is kept: new triggers never push a key's grace further out.
        _deferred.TryAdd(key, until);
    }

    /// <summary>The keys held and not being handed over, with their preferences (for <see cref="SpreadPlanner.HandOvers"/>).</summary>
    public List<(long Key, IReadOnlyList<string> Preferred)> HeldForPlacement()
    {
        lock (_gate)
        {
            _handingOver.IntersectWith(_held.Keys);
            return [.. _held.Where(h => !h.Value.IsLost && !_handingOver.Contains(h.Key))
                .Select(h => (h.Key, _preferred.TryGetValue(h.Key, out var p) ? p : (IReadOnlyList<string>)[]))];
        }
    }

    /// <summary>Whether some hand-over asked for is still under way (the next is planned only after it).</summary>
    public bool HandOverInFlight
    {
        get
        {
            lock (_gate)
            {
                _handingOver.IntersectWith(_held.Keys);
                return _handingOver.Count > 0;
            }
        }
    }

    /// <summary>The step-down asked for <paramref name="key"/> is over (released, or its runner was not leading it).</summary>
    public void HandOverDone(long key)
    {
        lock (_gate)
        {
            _handingOver.Remove(key);
        }
    }

    /// <summary>These keys' runners were asked to step down.</summary>
    public void HandingOver(IEnumerable<long> keys)
    {
        lock (_gate)
        {
            _handingOver.UnionWith(keys);
        }
    }
}
