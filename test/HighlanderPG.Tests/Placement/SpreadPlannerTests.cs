using HighlanderPG.Hosting;
using HighlanderPG.Placement;

namespace HighlanderPG.Tests.Placement;

/// <summary>The spread placement's pure decisions: node patterns, the share, rendezvous order and hand-over planning.</summary>
public sealed class SpreadPlannerTests
{
    private static readonly TimeSpan Settle = TimeSpan.FromSeconds(10);
    private static readonly TimeSpan Settled = TimeSpan.FromSeconds(60);

    [Theory]
    [InlineData("eu-*", "eu-1", true)]
    [InlineData("eu-*", "us-1", false)]
    [InlineData("*-gpu", "a-gpu", true)]
    [InlineData("*-gpu", "a-gpux", false)]
    [InlineData("a*b*c", "axxbyyc", true)]
    [InlineData("a*b*c", "acb", false)]
    [InlineData("ab*ba", "aba", false)]
    [InlineData("node-1", "node-1", true)]
    [InlineData("node-1", "node-10", false)]
    [InlineData("*", "anything", true)]
    public void Node_patterns_match_with_star_as_any_run(string pattern, string nodeId, bool matches) =>
        Assert.Equal(matches, NodePattern.Matches(pattern, nodeId));

    [Theory]
    [InlineData("", "must not be empty")]
    [InlineData("eu *", "printable ASCII without spaces")]
    [InlineData("eu-**", "'**'")]
    [InlineData("node-?", "only '*' is a wildcard")]
    public void Bad_patterns_are_refused_with_what_to_fix(string pattern, string expected) =>
        Assert.Contains(expected, NodePattern.Problem(pattern, HighlanderOptionsValidator.MaxNodeIdLength));

    [Fact]
    public void The_share_is_the_number_of_singletons_over_the_live_members_rounded_up()
    {
        var view = new SpreadView("a", 1, [new Member("b", 2, Settled, 0), new Member("c", 3, Settled, 0)], Settle);
        Assert.Equal(3, view.Live);
        Assert.Equal(10, view.Share(30));
        Assert.Equal(11, view.Share(31));
        Assert.Equal(1, view.Share(1));
    }

    [Fact]
    public void Members_rank_keys_alike_and_each_key_has_exactly_one_favourite()
    {
        Member[] all = [new("a", 1, Settled, 0), new("b", 2, Settled, 0), new("c", 3, Settled, 0)];
        var views = all.Select(m => new SpreadView(m.NodeId!, m.Pid, all, Settle)).ToList();
        var keys = Enumerable.Range(0, 3000).Select(i => (long)i * 7919).ToList();
        var favourites = keys.Select(k => views.Count(v => v.IsFavourite(k))).ToList();
        Assert.All(favourites, f => Assert.Equal(1, f));

        // Rendezvous spreads them about evenly (each near a third).
        Assert.All(views, v => Assert.InRange(keys.Count(v.IsFavourite), 800, 1200));

        // Each member's try order starts with its own favourites.
        var order = SpreadPlanner.FavouritesFirst(keys, views[0]);
        var own = keys.Count(views[0].IsFavourite);
        Assert.All(order.Take(own), k => Assert.True(views[0].IsFavourite(k)));
    }

    [Fact]
    public void A_leader_above_its_share_hands_over_its_part_of_the_deficit_of_settled_members_only()
    {
        var held = Held(Enumerable.Range(0, 15).Select(i => (long)i));

        // a and b lead 15 each, c (settled) none: share 10, c's deficit 10, a's part 5.
        var view = new SpreadView("a", 1, [new Member("b", 2, Settled, 15), new Member("c", 3, Settled, 0)], Settle);
        var handOvers = SpreadPlanner.HandOvers(held, 30, view);
        Assert.Equal(5, handOvers.Count);
        Assert.All(handOvers, h => Assert.Equal(HandOverReason.Surplus, h.Reason));

        // b has already handed its part over and c took it: a's part is the rest.
        view = new SpreadView("a", 1, [new Member("b", 2, Settled, 10), new Member("c", 3, Settled, 5)], Settle);
        Assert.Equal(5, SpreadPlanner.HandOvers(held, 30, view).Count);

        // c has not been live for the settle time: nothing moves yet.
        view = new SpreadView("a", 1, [new Member("b", 2, Settled, 15), new Member("c", 3, TimeSpan.FromSeconds(1), 0)], Settle);
        Assert.Empty(SpreadPlanner.HandOvers(held, 30, view));

        // Within the share: nothing moves.
        view = new SpreadView("a", 1, [new Member("b", 2, Settled, 15)], Settle);
        Assert.Empty(SpreadPlanner.HandOvers(held, 30, view));
    }

    [Fact]
    public void A_singleton_goes_to_a_settled_preferred_member_and_one_preferring_this_node_is_never_handed_over()
    {
        List<(long Key, IReadOnlyList<string> Preferred)> held = [(1, ["gpu-*"]), (2, ["a"]), (3, [])];
        var view = new SpreadView("a", 1, [new Member("gpu-1", 2, Settled, 0)], Settle);
        var handOvers = SpreadPlanner.HandOvers(held, 3, view);
        Assert.Equal([(1L, HandOverReason.Preference)], handOvers);

        // The preferred member has not settled yet: it keeps running here.
        view = new SpreadView("a", 1, [new Member("gpu-1", 2, TimeSpan.Zero, 0)], Settle);
        Assert.Empty(SpreadPlanner.HandOvers(held, 3, view));

        // Above its share (share 1 of 3 with three members), a never hands over key 2, which prefers it.
        view = new SpreadView("a", 1, [new Member("b", 2, Settled, 0), new Member("c", 3, Settled, 0)], Settle);
        Assert.DoesNotContain(SpreadPlanner.HandOvers([(2, ["a"]), (3, []), (4, [])], 3, view), h => h.Key == 2);
    }

    private static List<(long Key, IReadOnlyList<string> Preferred)> Held(IEnumerable<long> keys) =>
        [.. keys.Select(k => (k, (IReadOnlyList<string>)[]))];
}
