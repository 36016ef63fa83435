using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using HighlanderPG.Diagnostics;
using HighlanderPG.Hosting;
using HighlanderPG.Operations;
using HighlanderPG.Tests.Infrastructure;

namespace HighlanderPG.Tests.Hosting;

/// <summary>
/// A follower's take-over rehearsal (HighlanderNode.RehearseAsync, used by <c>highlander run</c>): the real path, on a
/// private lock, leaving nothing behind (docs/lease-protocol.md, "Rehearsal").
/// </summary>
[Collection(SharedServer.Name)]
public sealed class RehearsalTests(PostgresFixture pg)
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task A_rehearsal_runs_its_child_once_per_round_on_a_private_lock_and_leaves_no_lock_row_event_or_measurement()
    {
        var schema = "f_" + Guid.NewGuid().ToString("N")[..10];
        void Fenced(HighlanderOptions o)
        {
            o.Fencing = true;
            o.FencingSchema = schema;
        }

        var acquisitions = new ConcurrentQueue<string?>();
        using var listener = new MeterListener
        {
            InstrumentPublished = (instrument, l) =>
            {
                if (instrument.Meter.Name == HighlanderDiagnostics.MeterName && instrument.Name == "highlander.acquisitions")
                {
                    l.EnableMeasurementEvents(instrument);
                }
            },
        };
        listener.SetMeasurementEventCallback<long>((_, _, tags, _) =>
        {
            foreach (var tag in tags)
            {
                if (tag.Key == "highlander.singleton")
                {
                    acquisitions.Enqueue(tag.Value as string);
                }
            }
        });
        listener.Start();

        await using var cluster = new TestCluster(pg.ConnectionString);
        var idA = "a-" + Guid.NewGuid().ToString("N")[..6];
        var idB = "b-" + Guid.NewGuid().ToString("N")[..6];
        var a = await cluster.StartNodeAsync(idA, ["job"], Fenced);
        await cluster.Recorder.WaitStartedAsync("job", node: idA);
        var b = await cluster.StartNodeAsync(idB, ["job"], Fenced);
        await b.WaitForLeaderAsync("job", idA);
        var node = Assert.IsType<HighlanderNode>(b.Singletons);
        var changes = new ConcurrentQueue<SingletonStateChanged>();
        node.StateChanged += (_, e) => changes.Enqueue(e);

        var seen = new ConcurrentQueue<ILeadership>();
        var heldDuring = new ConcurrentQueue<long>();
        var ran = await node.RehearseAsync(async (leadership, _, _) =>
        {
            seen.Enqueue(leadership);
            heldDuring.Enqueue(await AdvisoryLocksOfAsync(idB));
        }, Timeout, CancellationToken.None);


        Assert.True(ran);
        Assert.Equal(2, seen.Count); // two rounds, one child each
        Assert.All(seen, l => Assert.Equal(HighlanderNode.RehearsalName, l.Name));
        Assert.All(seen, l => Assert.Equal(idB, l.NodeId));
        Assert.All(seen, l => Assert.Null(l.FencingEpoch)); // never bumped: no row in the fencing table
        Assert.All(heldDuring, n => Assert.Equal(1, n)); // the private lock, on the node's own session (a follower holds nothing else)
        Assert.Equal(0, await AdvisoryLocksOfAsync(idB)); // released before RehearseAsync returned
        Assert.Equal(0L, await Db.ScalarAsync<long>(pg.ConnectionString, $"SELECT count(*) FROM {schema}.leases WHERE name = $1", HighlanderNode.RehearsalName));
        Assert.DoesNotContain(changes, c => c.Name == HighlanderNode.RehearsalName);
        Assert.DoesNotContain(acquisitions, name => name == HighlanderNode.RehearsalName);
        Assert.Equal(["job"], b.Singletons.GetAll().Select(s => s.Name));
        Assert.DoesNotContain(cluster.Recorder.Events, e => e.Node == idB);

        // The real take-over afterwards, as ever: the old child stopped before the new one starts, with a fresh epoch.
        var mark = cluster.Recorder.Mark();
        await a.StopAsync();
        await cluster.Recorder.WaitStartedAsync("job", mark, node: idB);
        cluster.Recorder.AssertNoOverlap();
        Assert.NotNull((await b.WaitForStateAsync("job", SingletonState.Leading)).FencingEpoch);
    }

    [Fact]
    public async Task A_drained_node_gives_its_rehearsal_up_at_the_timeout_and_a_spread_node_does_not_rehearse()
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        var idA = "a-" + Guid.NewGuid().ToString("N")[..6];
        var idB = "b-" + Guid.NewGuid().ToString("N")[..6];
        await cluster.StartNodeAsync(idA, ["job"]);
        await cluster.Recorder.WaitStartedAsync("job", node: idA);
        var b = await cluster.StartNodeAsync(idB, ["job"]);
        await b.WaitForLeaderAsync("job", idA);

        await using var control = new ClusterControl(pg.ConnectionString, cluster.Namespace);
        await control.DrainAsync(idB, TimeSpan.FromMinutes(10));
        await cluster.Logs.WaitAsync(e => e.Node == idB && e.EventId.Id == HighlanderEventIds.HoldOffs, Timeout);
        var runs = 0;
        var ran = await Assert.IsType<HighlanderNode>(b.Singletons).RehearseAsync((_, _, _) =>
        {
            Interlocked.Increment(ref runs);
            return Task.CompletedTask;
        }, TimeSpan.FromSeconds(1), CancellationToken.None);
        Assert.False(ran);
        Assert.Equal(0, runs);
        Assert.Equal(0, await AdvisoryLocksOfAsync(idB));
        await control.UndrainAsync(idB);

        var spread = await cluster.StartNodeAsync("c-" + Guid.NewGuid().ToString("N")[..6], ["job"], o => o.Placement = SingletonPlacement.Spread);
        var spreadRan = await Assert.IsType<HighlanderNode>(spread.Singletons).RehearseAsync((_, _, _) =>
        {
            Interlocked.Increment(ref runs);
            return Task.CompletedTask;
        }, Timeout, CancellationToken.None);
        Assert.False(spreadRan);
        Assert.Equal(0, runs);
    }

    /// <summary>Advisory locks held by the node's lock session, granted (the spread membership's shared lock aside).</summary>
    private async Task<long> AdvisoryLocksOfAsync(string nodeId) => await Db.ScalarAsync<long>(pg.ConnectionString, """
        SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND l.granted AND l.mode = 'ExclusiveLock' AND a.application_name = $1
        """, "highlander/" + nodeId);
}
