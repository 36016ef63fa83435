using HighlanderPG.Fencing;

namespace HighlanderPG.Leasing;

/// <summary>
/// The hold-offs of this node (docs/lease-protocol.md, "Step down and drain"): keys it must not try until a point in
/// time, because an operator asked it to step down from them (<c>step_down</c>) or to take nothing (<c>drain</c>). A
/// held-off key stays wanted (its runner follows) but <see cref="TakeWork"/> leaves it out until the hold-off ends.
/// </summary>
internal sealed partial class KeyLedger
{
    private readonly Dictionary<long, long> _holdOffs = []; // key -> until (a TimeProvider timestamp)
    private readonly Dictionary<long, long> _ownHoldOffs = []; // the same, from this node's own step-downs: kept across reads of the operators'
    private long _holdAllUntil = long.MinValue; // a drain: every key, until then
    private readonly HashSet<Lease> _covered = []; // held leases an operator's request covered, until released or stepped down from
    private TimeProvider _holdOffClock = TimeProvider.System;

    /// <summary>The clock hold-offs are measured on (the node's).</summary>
    public TimeProvider HoldOffClock
    {
        set
        {
            lock (_gate)
            {
                _holdOffClock = value;
            }
        }
    }

    /// <summary>
    /// Replaces the hold-offs with those just read (remaining times from now); returns the keys this session holds that
    /// they cover (to step down from) and when the earliest of them ends (<see langword="null"/>: none).
    /// </summary>
    public (List<long> Covered, TimeSpan? NextEnd) SetHoldOffs(HoldOffSet set)
    {
        lock (_gate)
        {
            var now = _holdOffClock.GetTimestamp();
            _holdOffs.Clear();
            foreach (var (key, remaining) in set.Keys)
            {
                _holdOffs[key] = Until(now, remaining);
            }

            _holdAllUntil = set.All is { } all ? Until(now, all) : long.MinValue;
            // Stepped down from even when the hold-off is already over (a step-down with a zero hold-off).
            List<long> covered = [.. _held.Keys.Where(k => set.All is not null || set.Keys.ContainsKey(k))];
            foreach (var key in covered)
            {
                _covered.Add(_held[key]);
            }

            // Whatever was held off before may be free now (an undrain): try at the next turn.
            _poke = true;
            return (covered, NextHoldOffEnd(now));
        }
    }

    /// <summary>
    /// Holds <paramref name="key"/> off for <paramref name="duration"/>: this node stepped down from it
    /// (<c>IClusterSingletons.StepDownAsync</c>). Like an operator's hold-off, the key stays wanted (its runner follows
    /// and shows who leads) and is not tried until then. Returns when the next hold-off ends.
    /// </summary>
    public TimeSpan? HoldOffOwn(long key, TimeSpan duration)
    {
        lock (_gate)
        {
            var now = _holdOffClock.GetTimestamp();
            _ownHoldOffs[key] = Until(now, duration);
            return NextHoldOffEnd(now);
        }
    }

    /// <summary>
    /// Whether an operator's request covered <paramref name="lease"/> (and forgets it): its runner steps down as soon as it
    /// has the lease. A lease granted in the instant a request arrived (its runner not yet told, or its epoch still being
    /// bumped) could not step down then, and with a zero hold-off nothing else would make it.
    /// </summary>
    public bool TakeCovered(Lease lease)
    {
        lock (_gate)
        {
            return _covered.Remove(lease);
        }
    }

    /// <summary>Whether any held lease is covered by a request its runner has not acted on yet (<see cref="TakeCovered"/>).</summary>
    public bool AnyCovered
    {
        get
        {
            lock (_gate)
            {
                return _covered.Count > 0;
            }
        }
    }

    /// <summary>The longest hold-off kept: longer ones (an operator's "drain for ever", TimeSpan.MaxValue) end after it.</summary>
    internal static readonly TimeSpan MaxHoldOff = TimeSpan.FromDays(3650);

    /// <summary>
    /// The timestamp <paramref name="duration"/> after <paramref name="now"/>, the duration capped at <see cref="MaxHoldOff"/>:
    /// a timestamp is a long of the clock's ticks, and a longer hold-off would overflow it and so end at once.
    /// </summary>
    private long Until(long now, TimeSpan duration) =>
        now + LeaseTimings.ToTimestampDelta(duration > MaxHoldOff ? MaxHoldOff : duration, _holdOffClock);

    /// <summary>How long until the earliest hold-off ends (under the ledger's lock); <see langword="null"/>: none.</summary>
    private TimeSpan? NextHoldOffEnd(long now)
    {
        var next = _holdOffs.Values.Concat(_ownHoldOffs.Values).Append(_holdAllUntil).Where(u => u != long.MinValue).DefaultIfEmpty(long.MinValue).Min();
        return next == long.MinValue ? null : next <= now ? TimeSpan.Zero : _holdOffClock.GetElapsedTime(now, next);
    }

    /// <summary>Some hold-off ended: forget the ended ones and try at the next turn; returns when the next one ends (<see langword="null"/>: none).</summary>
    public TimeSpan? HoldOffsElapsed()
    {
        lock (_gate)
        {
            var now = _holdOffClock.GetTimestamp();
            foreach (var holdOffs in (Dictionary<long, long>[])[_holdOffs, _ownHoldOffs])
            {
                foreach (var ended in holdOffs.Where(h => h.Value <= now).Select(h => h.Key).ToList())
                {
                    holdOffs.Remove(ended);
                }
            }

            if (_holdAllUntil <= now)
            {
                _holdAllUntil = long.MinValue;
            }

            _poke = true;
            return NextHoldOffEnd(now);
        }
    }

    /// <summary>Whether any hold-off is known (running, or not yet seen to end).</summary>
    public bool AnyHoldOffs
    {
        get
        {
            lock (_gate)
            {
                return _holdOffs.Count > 0 || _ownHoldOffs.Count > 0 || _holdAllUntil != long.MinValue;
            }
        }
    }

    /// <summary>Whether <paramref name="key"/> is held off now.</summary>
    public bool IsHeldOff(long key)
    {
        lock (_gate)
        {
            return IsHeldOff(key, _holdOffClock.GetTimestamp());
        }
    }

    /// <summary>
    /// Of <paramref name="keys"/>, those not held off now (the filter of <see cref="TakeWork"/>; under the ledger's
    /// lock). A held-off key is not tried, so no failed try asks who holds it: when its holder is not known, that is
    /// flagged (<see cref="TakeHeldOffNeedHolders"/>) for the session to ask, so that a drained node shows whom it follows.
    /// </summary>
    private long[] WithoutHeldOff(long[] keys)
    {
        if (keys.Length == 0 || (_holdOffs.Count == 0 && _ownHoldOffs.Count == 0 && _holdAllUntil == long.MinValue))
        {
            return keys;
        }

        var now = _holdOffClock.GetTimestamp();
        var left = keys.Where(k => !IsHeldOff(k, now)).ToArray();
        if (left.Length < keys.Length && keys.Except(left).Any(k => !_holders.ContainsKey(k) || _staleHolders.Contains(k)))
        {
            _heldOffNeedHolders = true;
        }

        return left;
    }

    private bool _heldOffNeedHolders;

    /// <summary>Whether held-off keys were left out of a try while their holder is not known (and clears it).</summary>
    public bool TakeHeldOffNeedHolders()
    {
        lock (_gate)
        {
            var need = _heldOffNeedHolders;
            _heldOffNeedHolders = false;
            return need;
        }
    }

    private bool IsHeldOff(long key, long now) =>
        _holdAllUntil > now || (_holdOffs.TryGetValue(key, out var until) && until > now) || (_ownHoldOffs.TryGetValue(key, out var own) && own > now);
}
