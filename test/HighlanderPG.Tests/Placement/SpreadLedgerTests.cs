using HighlanderPG.Leasing;
using HighlanderPG.Placement;

namespace HighlanderPG.Tests.Placement;

/// <summary>
/// The spread placement's bookkeeping in the ledger (docs/lease-protocol.md, "Placement"): the room below the share,
/// the grace of a node at its share, and the bound of 0x: once a key's grace ends it is tried whatever the share.
/// </summary>
public sealed class SpreadLedgerTests
{
    private const long Grace = 1_000;
    private static readonly DateTimeOffset Now = DateTimeOffset.UnixEpoch;
    private static readonly TimeSpan Settled = TimeSpan.FromMinutes(1);

    // Two members: a share of 2 of these 4 singletons each.
    private static readonly SpreadView View = new("a", 1, [new Member("b", 2, Settled, 0)], TimeSpan.FromSeconds(10));

    private static KeyLedger Ledger(params long[] keys)
    {
        var ledger = new KeyLedger();
        foreach (var key in keys)
        {
            ledger.AddWant(key, $"s{key}");
        }

        return ledger;
    }

    [Fact]
    public void Below_its_share_a_node_tries_up_to_its_room_favourites_first()
    {
        var ledger = Ledger(1, 2, 3, 4);
        var plan = ledger.PlanTries([1, 2, 3, 4], View, registered: 4, now: 0, Grace)!;
        Assert.Empty(plan.All);
        Assert.Equal(2, plan.Limit);
        Assert.Equal(SpreadPlanner.FavouritesFirst([1, 2, 3, 4], View), plan.Limited);

        // It took two (its room): the two it did not take wait out the grace.
        var got = plan.Limited.Take(2).ToList();
        ledger.Taken(got, fencing: false, Now);
        ledger.AfterTry(plan, got, now: 0, Grace);
        Assert.Equal(Grace, ledger.NextGraceEnd);
    }

    [Fact]
    public void At_its_share_a_node_defers_a_free_key_for_the_grace_and_then_tries_it_whatever_its_share()
    {
        var ledger = Ledger(1, 2, 3);
        ledger.Taken([1L, 2L], fencing: false, Now);

        // At its share (2 of 4): key 3, up for its first try, is left to others for the grace.
        Assert.Equal([3L], ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 0).ToTry);
        Assert.Null(ledger.PlanTries([3], View, registered: 4, now: 0, Grace));
        Assert.Equal(Grace, ledger.NextGraceEnd);

        // Another trigger before the grace ends does not push it further out.
        Assert.Null(ledger.PlanTries([3], View, registered: 4, now: 500, Grace));
        Assert.Equal(Grace, ledger.NextGraceEnd);

        // Not yet: nothing to try.
        ledger.EndGraces(Grace - 1);
        Assert.Empty(ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 0).ToTry);

        // The grace is over: key 3 comes up to be tried, without the share's limit.
        ledger.EndGraces(Grace);
        var (_, toTry) = ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 0);
        Assert.Equal([3L], toTry);
        var plan = ledger.PlanTries(toTry, View, registered: 4, now: Grace, Grace)!;
        Assert.Equal([3L], plan.All);
        Assert.Empty(plan.Limited);
        Assert.Equal(long.MaxValue, ledger.NextGraceEnd);
    }

    [Fact]
    public void A_key_preferring_this_node_is_tried_at_once_and_one_preferring_a_live_other_waits_the_grace()
    {
        var ledger = Ledger(1, 2, 3);
        ledger.SetPreferred(1, ["a"]);
        ledger.SetPreferred(2, ["b*"]);
        ledger.SetPreferred(3, ["gone-*"]);
        ledger.Taken([10L, 11L], fencing: false, Now); // already at its share: preference goes past it

        var plan = ledger.PlanTries([1, 2, 3], View, registered: 4, now: 0, Grace)!;
        Assert.Equal([1L], plan.All);

        // Key 2 waits for b, key 3 (no preferred node alive) is spread like any other: at the share, it waits too.
        Assert.Empty(plan.Limited);
        Assert.Equal(Grace, ledger.NextGraceEnd);
    }
}
