using HighlanderPG.Diagnostics;
using HighlanderPG.Fencing;
using Npgsql;

namespace HighlanderPG.Leasing;

/// <summary>
/// Step-down and drain requests (docs/lease-protocol.md, "Step down and drain"): a notification on the control channel
/// naming this node makes the loop read its hold-offs (a round trip bounded like any other); the ledger then keeps the
/// held-off keys out of every try until they end, and the runners leading a covered singleton are asked to step down
/// (<see cref="HoldOffStepDown"/>).
/// </summary>
internal sealed partial class LockSession
{
    private volatile bool _controlPending;
    private ITimer? _holdOffTimer;

    /// <summary>Raised (on the session loop) with the keys this node holds that a new hold-off covers: their runners step down.</summary>
    public event Action<IReadOnlyList<long>>? HoldOffStepDown;

    /// <summary>Whether <paramref name="key"/> is held off now (an operator's step-down or drain).</summary>
    public bool IsHeldOff(long key) => _ledger.IsHeldOff(key);

    /// <summary>Whether this node has any hold-off, or a lease a request covered (a cheap check before <see cref="IsHeldOff"/>).</summary>
    public bool AnyHoldOffs => _ledger.AnyHoldOffs || _ledger.AnyCovered;

    /// <summary>Whether an operator's request covered <paramref name="lease"/> before its runner could step down (once).</summary>
    public bool TakeCovered(Lease lease) => _ledger.TakeCovered(lease);

    /// <inheritdoc/>
    public void HoldOff(long key, TimeSpan duration)
    {
        lock (_holdOffTimerGate)
        {
            ScheduleHoldOffEnd(_ledger.HoldOffOwn(key, duration));
        }

        WantsChanged?.Invoke();
    }

    private void OnControl(string payload)
    {
        if (payload == _options.NodeId)
        {
            _controlPending = true;
            Wake();
        }
    }

    /// <summary>
    /// The loop's control turn, before it takes its work: reads this node's hold-offs when a notification asked for it
    /// (true: a round trip was made); asks who holds held-off keys whose holder is not known (they are not tried, so no
    /// failed try would).
    /// </summary>
    private async Task<bool> ControlTurnAsync(NpgsqlConnection connection, SessionIo session)
    {
        if (_ledger.TakeHeldOffNeedHolders() && !_holderQueryPending)
        {
            _holderQueryPending = true;
            _nextHolderQuery = Math.Max(_nextHolderQuery, _time.GetTimestamp() + Delta(HolderQueryInterval));
        }

        if (!_controlPending)
        {
            return false;
        }

        _controlPending = false;
        var set = await RoundTripAsync(session, () => ControlSession.ReadAsync(connection, _options, _controlSeenId, _logger, CancellationToken.None)).ConfigureAwait(false);
        ApplyHoldOffs(set);
        return true;
    }

    private long _controlSeenId = long.MaxValue;

    private void ApplyHoldOffs(HoldOffSet set)
    {
        _controlSeenId = set.TopId;
        List<long> covered;
        lock (_holdOffTimerGate)
        {
            (covered, var next) = _ledger.SetHoldOffs(set);
            ScheduleHoldOffEnd(next);
        }

        if (set.All is not null || set.Keys.Count > 0)
        {
            Log.HoldOffs(_logger, set.All, set.Keys.Count, covered.Count);
        }

        if (covered.Count > 0)
        {
            // A drain steps many runners down at once: their releases go in one batch (docs/lease-protocol.md, "Releasing").
            _ledger.GatherReleases(_time.GetTimestamp() + Delta(_options.ReleaseGatherLimit), covered);
            HoldOffStepDown?.Invoke(covered);
        }

        WantsChanged?.Invoke();
    }

    private readonly Lock _holdOffTimerGate = new();

    /// <summary>
    /// Sets the timer to the next hold-off's end (none: off). Only a prompt wake-up: every try checks the hold-offs
    /// against the clock itself (<see cref="KeyLedger.TakeWork"/>).
    /// </summary>
    private void ScheduleHoldOffEnd(TimeSpan? next)
    {
        lock (_holdOffTimerGate)
        {
            if (next is not { } due)
            {
                _holdOffTimer?.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
                return;
            }

            // A little after the end, so that the ledger sees it ended (its clock is the same TimeProvider). A timer takes at
            // most about 49 days: a longer hold-off is looked at again after a day, and the timer set anew from there.
            due += TimeSpan.FromMilliseconds(1);
            if (due > TimeSpan.FromDays(1))
            {
                due = TimeSpan.FromDays(1);
            }
            if (_holdOffTimer is null)
            {
                _holdOffTimer = _time.CreateTimer(static state => ((LockSession)state!).OnHoldOffEnded(), this, due, Timeout.InfiniteTimeSpan);
            }
            else
            {
                _holdOffTimer.Change(due, Timeout.InfiniteTimeSpan);
            }
        }
    }

    private void OnHoldOffEnded()
    {
        lock (_holdOffTimerGate)
        {
            // Computed and set under one lock, so that a newer read's schedule is never overwritten by an older one.
            ScheduleHoldOffEnd(_ledger.HoldOffsElapsed());
        }

        Wake();
        WantsChanged?.Invoke();
    }
}
