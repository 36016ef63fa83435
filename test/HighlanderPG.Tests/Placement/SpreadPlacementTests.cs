using HighlanderPG.Diagnostics;
using HighlanderPG.Tests.Infrastructure;
using Microsoft.Extensions.DependencyInjection;

namespace HighlanderPG.Tests.Placement;

/// <summary>
/// The spread placement against a real PostgreSQL (issue 11, "Spread"; docs/lease-protocol.md, "Placement"): nodes
/// started together share the singletons; a node added later gets its share by graceful hand-overs, and no more than
/// needed; a node that leaves or dies has its singletons run elsewhere within the share; a preferred node takes its
/// singleton while it lives; the first-comer placement is unchanged.
/// </summary>
[Collection(SharedServer.Name)]
public sealed class SpreadPlacementTests(PostgresFixture pg)
{
    private static readonly TimeSpan Eventually = TimeSpan.FromSeconds(90);

    /// <summary>
    /// Spread, with a lease long enough that a load spike on the shared test machine does not expire a session (which
    /// would move singletons for a reason other than placement): grace = heartbeat = 500 ms, settle = 5 heartbeats.
    /// </summary>
    private static void Spread(HighlanderOptions o)
    {
        o.Placement = SingletonPlacement.Spread;
        o.LeaseDuration = TimeSpan.FromSeconds(9);
        o.LockDelayAfterServerStart = TimeSpan.FromSeconds(9);
    }

    private static string[] Names(int count) => [.. Enumerable.Range(0, count).Select(i => $"s{i:00}")];

    private static int Leading(TestNode node) => node.Singletons.GetAll().Count(s => s.State == SingletonState.Leading);

    private static string Counts(IEnumerable<TestNode> nodes) => string.Join(", ", nodes.Select(n => $"{n.NodeId}={Leading(n)}"));

    private static async Task WaitForAsync(Func<bool> condition, Func<string> what)
    {
        using var cts = new CancellationTokenSource(Eventually);
        while (!condition())
        {
            Assert.False(cts.IsCancellationRequested, $"timed out waiting for {what()}");
            await Task.Delay(50);
        }
    }

    /// <summary>Every one of <paramref name="total"/> singletons led by one of <paramref name="nodes"/>, none leading more than <paramref name="share"/>.</summary>
    private static Task WaitSpreadAsync(IReadOnlyList<TestNode> nodes, int total, int share) =>
        WaitForAsync(
            () => nodes.Sum(Leading) == total && nodes.All(n => Leading(n) <= share),
            () => $"{total} singletons led, each node at most {share} (now {Counts(nodes)})");

    private async Task<List<TestNode>> StartTogetherAsync(TestCluster cluster, string[] names, params string[] ids)
    {
        var nodes = new List<TestNode>();
        foreach (var id in ids)
        {
            nodes.Add(await cluster.StartNodeAsync(id, names, Spread, waitForStart: false));
        }

        await Task.WhenAll(nodes.Select(n => n.Host.StartAsync()));
        return nodes;
    }

    [Fact]
    public async Task Three_nodes_started_together_each_lead_at_most_their_share_of_thirty()
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        var nodes = await StartTogetherAsync(cluster, Names(30), "a", "b", "c");
        await WaitSpreadAsync(nodes, 30, 10);
        cluster.Recorder.AssertNoOverlap();
    }

    /// <summary>
    /// Two nodes lead 15 each; a third joins. Once it has been live for the settle time, the two hand it 10 singletons
    /// gracefully (each old child stopped before the new one starts), each its part of the deficit. Needed: 10 hand-overs;
    /// allowed: 2 more (a leader whose view of the newcomer's count is a heartbeat old may hand over one more than its
    /// part; the surplus is then handed on, never back and forth).
    /// </summary>
    [Fact]
    public async Task A_node_added_later_gets_its_share_by_graceful_hand_overs_and_no_more_than_needed()
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        var names = Names(30);
        var nodes = await StartTogetherAsync(cluster, names, "a", "b");
        await WaitSpreadAsync(nodes, 30, 15);
        await WaitChildrenAsync(cluster, 30, c: 0);

        var mark = cluster.Recorder.Mark();
        var c = await cluster.StartNodeAsync("c", names, Spread);
        nodes.Add(c);
        await WaitSpreadAsync(nodes, 30, 10);
        Assert.Equal(10, Leading(c));
        await WaitChildrenAsync(cluster, 30, c: 10);

        var handOvers = cluster.Recorder.Events.Where(e => e.Seq >= mark && e.Kind == LifeKind.Stopped && e.Node != "c").ToList();
        Assert.True(handOvers.Count is >= 10 and <= 12, $"{handOvers.Count} hand-overs:\n" + string.Join("\n", cluster.Recorder.Events.Where(e => e.Seq >= mark)));
        Assert.All(handOvers, h => Assert.NotNull(cluster.Recorder.Events.FirstOrDefault(e => e.Seq > h.Seq && e.Singleton == h.Singleton && e.Kind == LifeKind.Started)));
        Assert.Contains(cluster.Logs.Entries, e => e.EventId.Id == HighlanderEventIds.SpreadHandOver && e.Node is "a" or "b");
        cluster.Recorder.AssertNoOverlap();
    }

    /// <summary>Waits until the journal shows <paramref name="total"/> children running, <paramref name="c"/> of them on node c.</summary>
    private static Task WaitChildrenAsync(TestCluster cluster, int total, int c) =>
        WaitForAsync(
            () =>
            {
                cluster.Recorder.Poll();
                var running = new Dictionary<string, string>();
                foreach (var e in cluster.Recorder.Events)
                {
                    if (e.Kind == LifeKind.Started)
                    {
                        running[e.Singleton] = e.Node;
                    }
                    else if (e.Kind is LifeKind.Stopped or LifeKind.Killed or LifeKind.Failed && running.GetValueOrDefault(e.Singleton) == e.Node)
                    {
                        running.Remove(e.Singleton);
                    }
                }

                return running.Count == total && running.Values.Count(n => n == "c") == c;
            },
            () => $"{total} children running in the journal, {c} on c");

    [Fact]
    public async Task A_node_that_stops_has_its_singletons_run_on_the_others_within_their_new_share()
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        var nodes = await StartTogetherAsync(cluster, Names(30), "a", "b", "c");
        await WaitSpreadAsync(nodes, 30, 10);

        await nodes[1].StopAsync();
        var survivors = new[] { nodes[0], nodes[2] };
        await WaitSpreadAsync(survivors, 30, 15);
        cluster.Recorder.AssertNoOverlap();
    }

    /// <summary>
    /// The lock session of b is ended by the server (pg_terminate_backend): its singletons run again at once (on the
    /// others, or on b once it is back), and the spread returns within the share of three.
    /// </summary>
    [Fact]
    public async Task A_killed_lock_session_s_singletons_run_again_and_the_spread_returns_within_the_share()
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        var names = Names(30);
        var nodes = await StartTogetherAsync(cluster, names, "a", "b", "c");
        await WaitSpreadAsync(nodes, 30, 10);

        var victims = nodes[1].Singletons.GetAll().Where(s => s.State == SingletonState.Leading).Select(s => s.Name).ToList();
        var mark = cluster.Recorder.Mark();
        var pid = await Db.ScalarAsync<int>(pg.ConnectionString, "SELECT pid FROM pg_stat_activity WHERE application_name = 'highlander/b'");
        await Db.TerminateAsync(pg.ConnectionString, pid);
        foreach (var name in victims)
        {
            await cluster.Recorder.WaitStartedAsync(name, mark, timeout: Eventually);
        }

        // No overlap check here: a killed backend frees the locks before its node can know, so an old child may still be
        // stopping when the next starts (docs/lease-protocol.md, "Faults and what each does"; fencing covers it).
        await WaitSpreadAsync(nodes, 30, 10);
    }

    /// <summary>
    /// "p" prefers nodes matching <c>pref-*</c>: with none alive it runs on a or b; a preferred node that comes takes it
    /// (its leader hands it over gracefully once the newcomer has settled), and when that node goes it runs on a or b again.
    /// </summary>
    [Fact]
    public async Task A_preferred_node_takes_its_singleton_while_alive_and_gives_it_up_when_it_goes()
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        var names = Names(6);
        static void Preferring(IServiceCollection services) => services.AddClusterSingleton<RecordingService>("p", o => o.PreferredNodes.Add("pref-*"));
        var a = await cluster.StartNodeAsync("a", names, Spread, Preferring);
        var b = await cluster.StartNodeAsync("b", names, Spread, Preferring);
        var first = await cluster.Recorder.WaitStartedAsync("p", timeout: Eventually);
        Assert.Contains(first.Node, new[] { "a", "b" });

        var mark = cluster.Recorder.Mark();
        var preferred = await cluster.StartNodeAsync("pref-1", names, Spread, Preferring);
        await cluster.Recorder.WaitStartedAsync("p", mark, node: "pref-1", timeout: Eventually);
        Assert.True(
            cluster.Logs.Entries.Any(e => e.EventId.Id == HighlanderEventIds.PreferenceHandOver && e.Node == first.Node),
            $"{first.Node} did not log its hand-over to the preferred node; the nodes' log:\n{cluster.Logs.Describe()}");

        mark = cluster.Recorder.Mark();
        await preferred.StopAsync();
        var again = await cluster.Recorder.WaitStartedAsync("p", mark, timeout: Eventually);
        Assert.Contains(again.Node, new[] { "a", "b" });
        await WaitSpreadAsync([a, b], 7, 4);
        cluster.Recorder.AssertNoOverlap();
    }

    /// <summary>
    /// An operator drains b (docs/lease-protocol.md, "Step down and drain"): b leaves the members, so a and c take its
    /// singletons by their new share (15) at once; undrained, b joins again and gets its share back by hand-overs.
    /// Node ids are unique: hold-offs are durable and keyed by node id.
    /// </summary>
    [Fact]
    public async Task A_drained_node_is_counted_out_and_gets_its_share_back_when_undrained()
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        var suffix = "-" + Guid.NewGuid().ToString("N")[..6];
        var nodes = await StartTogetherAsync(cluster, Names(30), "a" + suffix, "b" + suffix, "c" + suffix);
        await WaitSpreadAsync(nodes, 30, 10);
        await using var control = new HighlanderPG.Operations.ClusterControl(pg.ConnectionString, cluster.Namespace);

        await control.DrainAsync(nodes[1].NodeId, TimeSpan.FromMinutes(5));
        await WaitSpreadAsync([nodes[0], nodes[2]], 30, 15);
        Assert.Equal(0, Leading(nodes[1]));

        Assert.Equal(1, await control.UndrainAsync(nodes[1].NodeId));
        await WaitSpreadAsync(nodes, 30, 10);
        cluster.Recorder.AssertNoOverlap();
    }

    [Fact]
    public async Task Under_first_comer_the_first_node_keeps_every_singleton()
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        var names = Names(10);
        var a = await cluster.StartNodeAsync("a", names);
        await WaitForAsync(() => Leading(a) == 10, () => $"a leading all 10 (now {Leading(a)})");
        var b = await cluster.StartNodeAsync("b", names);
        foreach (var name in names)
        {
            await b.WaitForLeaderAsync(name, "a", Eventually);
        }

        Assert.Equal(10, Leading(a));
        Assert.Equal(0, Leading(b));
        Assert.DoesNotContain(cluster.Logs.Entries, e => e.EventId.Id is HighlanderEventIds.SpreadHandOver or HighlanderEventIds.PlacementMembers);
    }
}
