using HighlanderPG.Leasing;

namespace HighlanderPG.Tests.Leasing;

/// <summary>The lock session's bookkeeping of wanted and held keys, without any I/O.</summary>
public sealed class KeyLedgerTests
{
    private static readonly DateTimeOffset Now = new(2026, 12, 1, 12, 0, 0, TimeSpan.Zero);

    [Fact]
    public void A_wanted_key_is_tried_once_per_change_and_granted_to_its_want_when_taken()
    {
        var ledger = new KeyLedger();
        var want = ledger.AddWant(1, "job");

        var (releases, toTry) = ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 0);
        Assert.Empty(releases);
        Assert.Equal([1L], toTry);
        Assert.Empty(ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 0).ToTry); // nothing changed since

        ledger.NewGeneration();
        var (grantedWant, lease) = Assert.Single(ledger.Taken([1L], fencing: false, Now));
        Assert.Same(want, grantedWant);
        Assert.Equal(1, lease.Key);
        Assert.Equal(1, lease.Generation);
        Assert.Equal([lease], ledger.HeldLeases());
        Assert.Empty(ledger.GetWaitTargets());
        Assert.False(ledger.AnyWants);

        // Held keys are never tried again (session locks are re-entrant), not even at a heartbeat.
        Assert.Empty(ledger.TakeWork(heartbeatDue: true, lockDelayPassed: true, now: 0).ToTry);
    }

    [Fact]
    public void Tries_wait_for_the_lock_delay_and_come_back_at_a_heartbeat_a_poke_or_an_announced_release()
    {
        var ledger = new KeyLedger();
        ledger.AddWant(1, "job");
        Assert.Empty(ledger.TakeWork(heartbeatDue: true, lockDelayPassed: false, now: 0).ToTry);
        Assert.Equal([1L], ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 0).ToTry);

        Assert.Equal([1L], ledger.TakeWork(heartbeatDue: true, lockDelayPassed: true, now: 0).ToTry);

        ledger.Poke();
        Assert.Equal([1L], ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 0).ToTry);

        ledger.OnReleaseAnnounced(2); // not wanted: no try
        Assert.Empty(ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 0).ToTry);
        ledger.OnReleaseAnnounced(1);
        Assert.Equal([1L], ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 0).ToTry);
    }

    [Fact]
    public void A_key_cannot_be_wanted_twice_but_a_lease_lost_at_the_stop_point_does_not_block_a_new_want()
    {
        var ledger = new KeyLedger();
        ledger.AddWant(1, "job");
        Assert.Throws<InvalidOperationException>(() => ledger.AddWant(1, "job"));

        var (_, lease) = Assert.Single(ledger.Taken([1L], fencing: false, Now));
        Assert.Throws<InvalidOperationException>(() => ledger.AddWant(1, "job"));

        lease.Lose("stop point", 0);
        ledger.AddWant(1, "job");
        Assert.Empty(ledger.HeldLeases());
    }

    [Fact]
    public void A_grant_for_a_cancelled_want_is_released_at_once()
    {
        var ledger = new KeyLedger();
        var want = ledger.AddWant(1, "job");
        ledger.CancelWant(want);
        Assert.False(ledger.AnyWants);

        Assert.Empty(ledger.Taken([1L], fencing: false, Now)); // taken in flight, nobody wants it any more
        var (releases, toTry) = ledger.TakeWork(heartbeatDue: true, lockDelayPassed: true, now: 0);
        var (lease, _) = Assert.Single(releases);
        Assert.Equal(1, lease.Key);
        Assert.Empty(toTry); // releases go first
    }

    [Fact]
    public void A_cancelled_want_replaced_by_a_new_one_is_not_cancelled_again()
    {
        var ledger = new KeyLedger();
        var first = ledger.AddWant(1, "job");
        ledger.CancelWant(first);
        var second = ledger.AddWant(1, "job");
        ledger.CancelWant(first); // late callback of the first want
        var (granted, _) = Assert.Single(ledger.Taken([1L], fencing: false, Now));
        Assert.Same(second, granted);
    }

    [Fact]
    public void A_release_is_queued_only_for_a_held_lease_and_unholds_it_once_done()
    {
        var ledger = new KeyLedger();
        ledger.AddWant(1, "job");
        var (_, lease) = Assert.Single(ledger.Taken([1L], fencing: false, Now));
        var stranger = new Lease(1, 99, Now);

        Assert.False(ledger.QueueRelease(stranger, new TaskCompletionSource()));
        var done = new TaskCompletionSource();
        Assert.True(ledger.QueueRelease(lease, done));

        var (releases, _) = ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 0);
        Assert.Equal(lease, Assert.Single(releases).Lease);
        ledger.Released(releases);
        Assert.Empty(ledger.HeldLeases());
        Assert.False(ledger.QueueRelease(lease, new TaskCompletionSource()));
    }

    [Fact]
    public void Losing_everything_completes_queued_and_inflight_releases_and_forgets_holders()
    {
        var ledger = new KeyLedger();
        ledger.AddWant(1, "a");
        ledger.AddWant(2, "b");
        ledger.AddWant(3, "c");
        var taken = ledger.Taken([1L, 2L], fencing: false, Now);
        ledger.UpdateHolders([3L], new() { [3L] = new LeaderInfo("other", 7, "highlander/other", null, null) });
        Assert.NotNull(ledger.GetHolder(3));

        var inflight = new TaskCompletionSource();
        var queued = new TaskCompletionSource();
        Assert.True(ledger.QueueRelease(taken[0].Lease, inflight));
        _ = ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 0); // now in flight
        Assert.True(ledger.QueueRelease(taken[1].Lease, queued));

        var lost = ledger.LoseAll();
        Assert.Equal(2, lost.Count);
        Assert.True(inflight.Task.IsCompletedSuccessfully);
        Assert.True(queued.Task.IsCompletedSuccessfully);
        Assert.Empty(ledger.HeldLeases());
        Assert.Null(ledger.GetHolder(3));
        Assert.Equal([(3L, (int?)null)], ledger.GetWaitTargets());
        Assert.Equal([3L], ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 0).ToTry); // a new session tries again
    }

    [Fact]
    public void Holder_changes_are_reported_only_when_the_holder_changes()
    {
        var ledger = new KeyLedger();
        ledger.AddWant(1, "job");
        var holder = new LeaderInfo("other", 7, "highlander/other", null, null);
        Assert.Equal([(1L, (LeaderInfo?)holder)], ledger.UpdateHolders([1L], new() { [1L] = holder }));
        Assert.Empty(ledger.UpdateHolders([1L], new() { [1L] = new LeaderInfo("other", 7, "highlander/other", null, null) }));
        Assert.Equal([(7, 1L)], ledger.GetWaitTargets().Select(t => (t.HolderPid!.Value, t.Key)));
        Assert.Equal([(1L, (LeaderInfo?)null)], ledger.UpdateHolders([1L], []));
    }

    [Fact]
    public void With_fencing_a_taken_key_waits_for_its_epoch_before_it_is_granted()
    {
        var ledger = new KeyLedger();
        var want = ledger.AddWant(1, "job");
        Assert.Empty(ledger.Taken([1L], fencing: true, Now));
        Assert.Equal([1L], ledger.UnfencedDue(0));
        Assert.Equal(long.MinValue, ledger.NextUnfenced);

        Assert.Equal((1L, "job"), ledger.TakeFenceCandidate([1L]));
        ledger.FenceDeferred(1, 500); // an old leader's guarded transaction holds the row: later
        Assert.Empty(ledger.UnfencedDue(499));
        Assert.Equal(500, ledger.NextUnfenced);
        Assert.Equal([1L], ledger.UnfencedDue(500));

        var (granted, lease) = Assert.Single(ledger.Fenced(1, 42));
        Assert.Same(want, granted);
        Assert.Equal(42, lease.Epoch);
        Assert.Empty(ledger.UnfencedDue(long.MaxValue));
        Assert.Equal(long.MaxValue, ledger.NextUnfenced);
    }

    [Fact]
    public void An_unfenced_key_whose_want_was_cancelled_is_released_not_bumped()
    {
        var ledger = new KeyLedger();
        var want = ledger.AddWant(1, "job");
        Assert.Empty(ledger.Taken([1L], fencing: true, Now));
        ledger.CancelWant(want);

        Assert.Null(ledger.TakeFenceCandidate([1L]));
        Assert.Empty(ledger.UnfencedDue(long.MaxValue));
        Assert.Equal(1, Assert.Single(ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 0).Releases).Lease.Key);
    }

    [Fact]
    public void A_failed_bump_drops_the_want_and_releases_the_lock()
    {
        var ledger = new KeyLedger();
        var want = ledger.AddWant(1, "job");
        Assert.Empty(ledger.Taken([1L], fencing: true, Now));

        Assert.Same(want, ledger.FenceFailed(1));
        Assert.False(ledger.AnyWants);
        Assert.Empty(ledger.UnfencedDue(long.MaxValue));
        Assert.Equal(1, Assert.Single(ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 0).Releases).Lease.Key);
    }
    [Fact]
    public void A_heartbeat_tries_only_keys_whose_holder_nobody_watches_and_every_tenth_heartbeat_tries_all()
    {
        var ledger = new KeyLedger();
        ledger.AddWant(1, "a");
        ledger.AddWant(2, "b");
        ledger.AddWant(3, "c");
        Assert.Equal([1L, 2L, 3L], ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 0).ToTry.Order());
        var x = new LeaderInfo("x", 7, "highlander/x", null, null);
        var y = new LeaderInfo("y", 8, "highlander/y", null, null);
        ledger.UpdateHolders([1L, 2L, 3L], new() { [1L] = x, [2L] = x, [3L] = y });

        // One key per holder, the holder with the most keys first.
        Assert.Equal([(7, 1L), (8, 3L)], ledger.WatchTargets());
        Assert.Equal([1L, 2L, 3L], ledger.TakeWork(heartbeatDue: true, lockDelayPassed: true, now: 0).ToTry.Order()); // nobody watches yet

        ledger.SetWatched([7, 8]);
        ledger.Poke(); // a full try starts the count again
        Assert.Equal([1L, 2L, 3L], ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 0).ToTry.Order());
        for (var i = 1; i < KeyLedger.HeartbeatsPerFullTry; i++)
        {
            Assert.Empty(ledger.TakeWork(heartbeatDue: true, lockDelayPassed: true, now: 0).ToTry);
        }

        Assert.Equal([1L, 2L, 3L], ledger.TakeWork(heartbeatDue: true, lockDelayPassed: true, now: 0).ToTry.Order()); // the backstop
        Assert.Empty(ledger.NeedHolder([1L, 2L, 3L])); // and no need to ask who holds them

        ledger.SetWatched([7]);
        Assert.Equal([3L], ledger.TakeWork(heartbeatDue: true, lockDelayPassed: true, now: 0).ToTry);
        ledger.SetWatched(null);
        Assert.Equal([1L, 2L, 3L], ledger.TakeWork(heartbeatDue: true, lockDelayPassed: true, now: 0).ToTry.Order());
    }

    [Fact]
    public void An_announced_release_makes_only_the_announced_keys_tried_and_a_heartbeat_adds_them_to_the_unwatched()
    {
        var ledger = new KeyLedger();
        for (var key = 1L; key <= 5; key++)
        {
            ledger.AddWant(key, $"s{key}");
        }

        _ = ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 0);
        var x = new LeaderInfo("x", 7, "highlander/x", null, null);
        ledger.UpdateHolders([1L, 2L, 3L, 4L, 5L], new() { [1L] = x, [2L] = x, [3L] = x, [4L] = x, [5L] = x });
        ledger.SetWatched([7]);

        // A node handing over announces its keys in batches: each batch's keys are tried, not every wanted key.
        ledger.OnReleaseAnnounced(2);
        ledger.OnReleaseAnnounced(4);
        ledger.OnReleaseAnnounced(9); // not wanted
        Assert.Equal([2L, 4L], ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 0).ToTry.Order());
        Assert.Empty(ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 0).ToTry); // tried once per announcement
        Assert.Equal([2L, 4L], ledger.NeedHolder([2L, 4L]).Order()); // who took them is asked after a failed try

        // Announced while the lock-delay runs: kept for the first try after it.
        ledger.OnReleaseAnnounced(3);
        Assert.Empty(ledger.TakeWork(heartbeatDue: false, lockDelayPassed: false, now: 0).ToTry);
        Assert.Equal([3L], ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 0).ToTry);

        // At a heartbeat, announced keys go with the keys nobody watches (2 and 4 are still of unknown holder).
        ledger.OnReleaseAnnounced(5);
        Assert.Equal([2L, 3L, 4L, 5L], ledger.TakeWork(heartbeatDue: true, lockDelayPassed: true, now: 0).ToTry.Order());

        // A taken key is never tried again, announced or not.
        _ = ledger.Taken([5L], fencing: false, DateTimeOffset.UnixEpoch);
        ledger.OnReleaseAnnounced(5);
        Assert.Empty(ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 0).ToTry);
    }

    [Fact]
    public void A_holder_seen_gone_makes_its_keys_only_tried_and_asked_again_without_reporting_a_change_until_asked()
    {
        var ledger = new KeyLedger();
        ledger.AddWant(1, "a");
        ledger.AddWant(2, "b");
        ledger.AddWant(3, "c");
        _ = ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 0);
        var x = new LeaderInfo("x", 7, "highlander/x", null, null);
        var y = new LeaderInfo("y", 8, "highlander/y", null, null);
        ledger.UpdateHolders([1L, 2L, 3L], new() { [1L] = x, [2L] = x, [3L] = y });
        ledger.SetWatched([7, 8]);

        ledger.HolderGone(1);
        Assert.Equal([1L, 2L], ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 0).ToTry.Order()); // y's key 3 is watched on its own
        Assert.Equal([1L, 2L], ledger.NeedHolder([1L, 2L, 3L]).Order());
        Assert.Equal([(8, 3L)], ledger.WatchTargets()); // x is not watched until it is known again
        Assert.Equal(x, ledger.GetHolder(1)); // still shown until asked

        // Asked: key 1 moved to y, key 2 is still x's (a false alarm for it: no change reported).
        Assert.Equal([(1L, (LeaderInfo?)y)], ledger.UpdateHolders([1L, 2L], new() { [1L] = y, [2L] = x }));
        Assert.Empty(ledger.NeedHolder([1L, 2L, 3L]));
        Assert.Equal([(8, 1L), (7, 2L)], ledger.WatchTargets());

        // An announced release makes that key's holder unknown until asked, and that key (only) is tried.
        ledger.OnReleaseAnnounced(3);
        Assert.Equal([3L], ledger.NeedHolder([1L, 2L, 3L]));
        Assert.Equal([3L], ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 0).ToTry);
    }

    [Fact]
    public void A_holder_nobody_knew_seen_gone_makes_every_wanted_key_tried()
    {
        var ledger = new KeyLedger();
        ledger.AddWant(1, "a");
        ledger.AddWant(2, "b");
        _ = ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 0);

        ledger.HolderGone(1);
        Assert.Equal([1L, 2L], ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 0).ToTry.Order());
    }

    [Fact]
    public void A_failed_try_lost_a_race_only_when_a_known_holder_of_one_of_its_keys_went_since()
    {
        var ledger = new KeyLedger();
        ledger.AddWant(1, "a");
        ledger.AddWant(2, "b");
        _ = ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 0);
        Assert.False(ledger.LostRace([1L, 2L])); // nobody known yet (a node starting): not a race

        var x = new LeaderInfo("x", 7, "highlander/x", null, null);
        var y = new LeaderInfo("y", 8, "highlander/y", null, null);
        ledger.UpdateHolders([1L, 2L], new() { [1L] = x, [2L] = y });
        Assert.False(ledger.LostRace([1L, 2L])); // held by known, live holders

        ledger.HolderGone(1); // x ended: whoever takes key 1 now won a race against this node
        Assert.True(ledger.LostRace([1L]));
        Assert.False(ledger.LostRace([2L]));

        ledger.UpdateHolders([1L], new() { [1L] = y }); // asked: y won
        Assert.False(ledger.LostRace([1L, 2L]));

        ledger.OnReleaseAnnounced(2); // y announced a release of key 2
        Assert.True(ledger.LostRace([2L]));

        ledger.UpdateHolders([2L], []); // asked: held by nobody (a momentary shared lock): no race, the free-key retry
        Assert.False(ledger.LostRace([2L]));
    }

    [Fact]
    public void A_stop_gathers_the_releases_of_every_held_key_into_one_batch()
    {
        var ledger = new KeyLedger();
        var leases = new List<Lease>();
        foreach (var key in new[] { 1L, 2L, 3L })
        {
            ledger.AddWant(key, $"s{key}");
        }

        leases.AddRange(ledger.Taken([1L, 2L, 3L], fencing: false, Now).Select(t => t.Lease));
        ledger.GatherReleases(until: 1_000);
        Assert.Equal(1_000, ledger.GatheringUntil);

        Assert.True(ledger.QueueRelease(leases[2], new TaskCompletionSource(), out var gathered));
        Assert.True(gathered); // held: the loop need not wake for it
        Assert.Empty(ledger.TakeWork(heartbeatDue: true, lockDelayPassed: true, now: 10).Releases);
        Assert.True(ledger.QueueRelease(leases[0], new TaskCompletionSource(), out gathered));
        Assert.True(gathered);
        Assert.Empty(ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 20).Releases);

        Assert.True(ledger.QueueRelease(leases[1], new TaskCompletionSource(), out gathered));
        Assert.False(gathered); // the last one: the batch goes now, well before the gathering's end
        Assert.Equal(long.MaxValue, ledger.GatheringUntil);
        var (releases, toTry) = ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 30);
        Assert.Equal([1L, 2L, 3L], releases.Select(r => r.Lease.Key).Order());
        Assert.Empty(toTry);
    }

    [Fact]
    public void A_gathering_sends_what_it_has_at_its_end_and_then_releases_go_as_they_come()
    {
        var ledger = new KeyLedger();
        foreach (var key in new[] { 1L, 2L, 3L })
        {
            ledger.AddWant(key, $"s{key}");
        }

        var leases = ledger.Taken([1L, 2L, 3L], fencing: false, Now).Select(t => t.Lease).ToList();
        ledger.GatherReleases(until: 1_000);
        Assert.True(ledger.QueueRelease(leases[0], new TaskCompletionSource(), out _));
        Assert.Empty(ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 999).Releases);

        // A child still stopping at the end (2 and 3 here) does not hold back those already gone.
        Assert.Equal(1L, Assert.Single(ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 1_000).Releases).Lease.Key);
        Assert.Equal(long.MaxValue, ledger.GatheringUntil);
        Assert.True(ledger.QueueRelease(leases[1], new TaskCompletionSource(), out var gathered));
        Assert.False(gathered);
        Assert.Equal(2L, Assert.Single(ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 1_001).Releases).Lease.Key);
    }

    [Fact]
    public void A_single_held_key_or_a_lost_session_leaves_nothing_to_gather()
    {
        var ledger = new KeyLedger();
        ledger.AddWant(1, "one");
        var (_, lease) = Assert.Single(ledger.Taken([1L], fencing: false, Now));
        ledger.GatherReleases(until: 1_000);
        Assert.Equal(long.MaxValue, ledger.GatheringUntil);
        Assert.True(ledger.QueueRelease(lease, new TaskCompletionSource(), out var gathered));
        Assert.False(gathered);
        Assert.Single(ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 0).Releases);

        ledger.AddWant(2, "two");
        ledger.AddWant(3, "three");
        _ = ledger.Taken([2L, 3L], fencing: false, Now);
        ledger.GatherReleases(until: 1_000);
        Assert.Equal(1_000, ledger.GatheringUntil);
        _ = ledger.LoseAll(); // the session went, and its locks with it
        Assert.Equal(long.MaxValue, ledger.GatheringUntil);
    }

    [Fact]
    public void A_drain_gathers_only_the_keys_it_steps_down_and_a_stop_meanwhile_adds_the_rest_keeping_the_sooner_end()
    {
        var ledger = new KeyLedger();
        foreach (var key in new[] { 1L, 2L, 3L, 4L })
        {
            ledger.AddWant(key, $"s{key}");
        }

        var leases = ledger.Taken([1L, 2L, 3L, 4L], fencing: false, Now).Select(t => t.Lease).ToDictionary(l => l.Key);
        ledger.GatherReleases(until: 500, keys: [1L, 2L, 9L]); // 9: not held here, nothing to wait for
        Assert.True(ledger.QueueRelease(leases[1], new TaskCompletionSource(), out var gathered));
        Assert.True(gathered);
        Assert.True(ledger.QueueRelease(leases[2], new TaskCompletionSource(), out gathered));
        Assert.False(gathered); // both stepped down: they go together, whatever 3 and 4 do
        Assert.Equal([1L, 2L], ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 10).Releases.Select(r => r.Lease.Key).Order());

        ledger.GatherReleases(until: 400, keys: [3L]); // one key: nothing to gather
        Assert.Equal(long.MaxValue, ledger.GatheringUntil);
        ledger.GatherReleases(until: 300, keys: [3L, 4L]);
        ledger.GatherReleases(until: 1_000); // the node stops meanwhile: every held key, the sooner end kept
        Assert.Equal(300, ledger.GatheringUntil);
        Assert.True(ledger.QueueRelease(leases[4], new TaskCompletionSource(), out gathered));
        Assert.True(gathered);
        Assert.Empty(ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 299).Releases);
        Assert.Equal(4L, Assert.Single(ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 300).Releases).Lease.Key);
    }

    [Fact]
    public void A_release_nobody_waits_for_counts_for_the_gathering_so_a_node_stopping_after_a_take_over_is_not_held_back()
    {
        var ledger = new KeyLedger();
        ledger.AddWant(1, "one");
        var two = ledger.AddWant(2, "two");
        var leases = ledger.Taken([1L], fencing: false, Now).Select(t => t.Lease).ToList();
        ledger.CancelWant(two); // the node began stopping as the try that takes 2 was under way
        Assert.Empty(ledger.Taken([2L], fencing: false, Now)); // taken for nobody: released at once
        var (orphaned, _) = ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 0);
        Assert.Equal(2L, Assert.Single(orphaned).Lease.Key); // on its way to the server, still held until it answers

        ledger.AddWant(3, "three");
        var three = Assert.Single(ledger.Taken([3L], fencing: false, Now)).Lease;
        ledger.GatherReleases(until: 1_000);
        ledger.QueueOrphanRelease(three); // its runner gave up: it counts as queued
        Assert.True(ledger.QueueRelease(leases[0], new TaskCompletionSource(), out var gathered));
        Assert.False(gathered);
        Assert.Equal([1L, 3L], ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 1).Releases.Select(r => r.Lease.Key).Order());
    }
}
