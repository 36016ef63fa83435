using HighlanderPG.Fencing;
using HighlanderPG.Leasing;
using Microsoft.Extensions.Time.Testing;

namespace HighlanderPG.Tests.Leasing;

/// <summary>The ledger's hold-offs (an operator's step-down or drain), without any I/O.</summary>
public sealed class KeyLedgerHoldOffTests
{
    private static readonly DateTimeOffset Now = new(2026, 12, 1, 12, 0, 0, TimeSpan.Zero);

    [Fact]
    public void A_held_off_key_is_not_tried_until_its_hold_off_ends_and_the_held_keys_it_covers_are_returned()
    {
        var time = new FakeTimeProvider(Now);
        var ledger = new KeyLedger { HoldOffClock = time };
        ledger.AddWant(1, "held");
        ledger.AddWant(2, "free");
        Assert.Equal([1L, 2L], ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 0).ToTry.Order());
        ledger.Taken([1L], fencing: false, Now);

        var (covered, next) = ledger.SetHoldOffs(new HoldOffSet(null, new Dictionary<long, TimeSpan> { [1] = TimeSpan.FromSeconds(30) }));
        Assert.Equal([1L], covered);
        Assert.Equal(TimeSpan.FromSeconds(30), next);

        // The runner stepped down and wants it again: not tried (not even at a heartbeat), the other key is.
        var held = Assert.Single(ledger.HeldLeases());
        var done = new TaskCompletionSource();
        Assert.True(ledger.QueueRelease(held, done));
        var (releases, _) = ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 0);
        ledger.Released(releases);
        ledger.AddWant(1, "held");
        Assert.Equal([2L], ledger.TakeWork(heartbeatDue: true, lockDelayPassed: true, now: 0).ToTry);
        Assert.True(ledger.IsHeldOff(1));
        Assert.True(ledger.TakeHeldOffNeedHolders()); // nobody asked who holds it: the session asks
        Assert.False(ledger.TakeHeldOffNeedHolders());

        time.Advance(TimeSpan.FromSeconds(30));
        Assert.Null(ledger.HoldOffsElapsed());
        Assert.False(ledger.IsHeldOff(1));
        Assert.False(ledger.AnyHoldOffs);
        Assert.Equal([1L, 2L], ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 0).ToTry.Order());
    }

    [Fact]
    public void A_hold_off_of_centuries_or_TimeSpan_MaxValue_lasts_the_longest_kept_instead_of_overflowing_and_ending_at_once()
    {
        var time = new FakeTimeProvider(Now);
        var ledger = new KeyLedger { HoldOffClock = time };
        ledger.AddWant(1, "a");
        ledger.AddWant(2, "b");

        // An operator's "drain for ever" (ClusterControl.DrainAsync(node, TimeSpan.MaxValue), or --hold-off 3000000h) and
        // a step-down of three centuries: in clock ticks both overflowed a long, and the hold-off ended at once.
        var (_, next) = ledger.SetHoldOffs(new HoldOffSet(TimeSpan.MaxValue, new Dictionary<long, TimeSpan> { [2] = TimeSpan.FromDays(365 * 300) }));
        Assert.Equal(KeyLedger.MaxHoldOff, next);
        time.Advance(TimeSpan.FromDays(1000));
        Assert.Equal(KeyLedger.MaxHoldOff - TimeSpan.FromDays(1000), ledger.HoldOffsElapsed());
        Assert.True(ledger.IsHeldOff(1));
        Assert.True(ledger.IsHeldOff(2));
        Assert.Empty(ledger.TakeWork(heartbeatDue: true, lockDelayPassed: true, now: 0).ToTry);

        // A node's own step-down is capped the same way.
        ledger.SetHoldOffs(new HoldOffSet(null, new Dictionary<long, TimeSpan>()));
        Assert.Equal(KeyLedger.MaxHoldOff, ledger.HoldOffOwn(1, TimeSpan.MaxValue));
        Assert.True(ledger.IsHeldOff(1));
        Assert.Equal([2L], ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 0).ToTry);
    }

    [Fact]
    public void A_drain_holds_off_every_key_and_a_zero_hold_off_steps_down_without_holding_off()
    {
        var time = new FakeTimeProvider(Now);
        var ledger = new KeyLedger { HoldOffClock = time };
        ledger.AddWant(1, "a");
        ledger.AddWant(2, "b");
        ledger.AddWant(3, "c");
        ledger.Taken([1L, 2L], fencing: false, Now);

        var (covered, next) = ledger.SetHoldOffs(new HoldOffSet(TimeSpan.FromMinutes(10), new Dictionary<long, TimeSpan>()));
        Assert.Equal([1L, 2L], covered.Order());
        Assert.Equal(TimeSpan.FromMinutes(10), next);
        Assert.Empty(ledger.TakeWork(heartbeatDue: true, lockDelayPassed: true, now: 0).ToTry);

        // An undrain: the next read finds nothing, and every wanted key is tried again at once.
        (covered, next) = ledger.SetHoldOffs(HoldOffSet.None);
        Assert.Empty(covered);
        Assert.Null(next);
        Assert.Equal([3L], ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 0).ToTry);

        // A step-down with a zero hold-off: stepped down from, but tried again at once.
        (covered, _) = ledger.SetHoldOffs(new HoldOffSet(null, new Dictionary<long, TimeSpan> { [1] = TimeSpan.Zero }));
        Assert.Equal([1L], covered);
        Assert.False(ledger.IsHeldOff(1));
    }

    [Fact]
    public void A_lease_a_request_covered_before_its_runner_had_it_is_remembered_once_until_released()
    {
        var time = new FakeTimeProvider(Now);
        var ledger = new KeyLedger { HoldOffClock = time };
        ledger.AddWant(1, "a");
        ledger.AddWant(2, "b");
        ledger.Taken([1L, 2L], fencing: false, Now);
        var leases = ledger.HeldLeases().ToDictionary(l => l.Key);

        // A zero hold-off (step down, take again at once): IsHeldOff is false by the time a runner that was not told yet
        // starts leading, so the ledger remembers which lease the request covered.
        var (covered, _) = ledger.SetHoldOffs(new HoldOffSet(null, new Dictionary<long, TimeSpan> { [1] = TimeSpan.Zero }));
        Assert.Equal([1L], covered);
        Assert.True(ledger.AnyCovered);
        Assert.False(ledger.TakeCovered(leases[2]));
        Assert.True(ledger.TakeCovered(leases[1]));
        Assert.False(ledger.TakeCovered(leases[1])); // once
        Assert.False(ledger.AnyCovered);

        // A covered lease released (its runner stepped down at once) is forgotten: its next lease is not stepped down from.
        ledger.SetHoldOffs(new HoldOffSet(null, new Dictionary<long, TimeSpan> { [2] = TimeSpan.Zero }));
        var done = new TaskCompletionSource();
        Assert.True(ledger.QueueRelease(leases[2], done));
        var (releases, _) = ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 0);
        ledger.Released(releases);
        Assert.False(ledger.AnyCovered);
        Assert.False(ledger.TakeCovered(leases[2]));
    }
}
