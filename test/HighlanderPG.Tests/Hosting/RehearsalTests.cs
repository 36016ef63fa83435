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
            o.RehearseTakeOver = false; // rehearsed below, by hand
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
        var snapshots = new ConcurrentQueue<HighlanderPG.Discovery.ClusterSnapshot>();
        var discovered = new ConcurrentQueue<IReadOnlyList<HighlanderPG.Discovery.SingletonLeader>>();
        var stoppedWhileRunning = 0;
        var rounds = await node.RehearseAsync(async (leadership, _, running, stopping) =>
        {
            seen.Enqueue(leadership);
            heldDuring.Enqueue(await AdvisoryLocksOfAsync(idB));
            await using (var connection = new Npgsql.NpgsqlConnection(pg.ConnectionString))
            {
                await connection.OpenAsync();
                snapshots.Enqueue(await HighlanderPG.Discovery.ClusterSnapshot.ReadAsync(connection, null, schema));
                discovered.Enqueue(await HighlanderPG.Discovery.LeaderDiscovery.ListAsync(connection, null, cluster.Namespace, schema));
            }

            running();
            try
            {
                await Task.Delay(System.Threading.Timeout.Infinite, stopping);
            }
            catch (OperationCanceledException)
            {
                Interlocked.Increment(ref stoppedWhileRunning); // stopped by its token, as a node's stop does
            }
        }, Timeout, CancellationToken.None);

        // Three rounds: the lock free; held by a contender that hands it over (unlock and announce) once this node's waiter
        // watches it; held by a contender whose session then ends (a crash). One child each, stopped while it ran.
        Assert.Equal(HighlanderNode.RehearsalRounds, rounds.Select(r => r.Round));
        Assert.All(rounds, r => Assert.True(r.Ran));
        Assert.Equal([false, true, true], rounds.Select(r => r.ContenderWatched));
        Assert.Equal(3, seen.Count);
        Assert.Equal(3, stoppedWhileRunning);
        Assert.All(seen, l => Assert.Equal(HighlanderNode.RehearsalName, l.Name));
        Assert.All(seen, l => Assert.Equal(idB, l.NodeId));
        Assert.All(seen, l => Assert.Null(l.FencingEpoch)); // never bumped: no row in the fencing table
        Assert.All(heldDuring, n => Assert.Equal(1, n)); // the private lock, on the node's own session (a follower holds nothing else)
        // ... which a cluster snapshot (status, the dashboard) leaves out: the node leads nothing there, no unnamed key shows.
        Assert.Equal(3, snapshots.Count);
        Assert.All(snapshots, snapshot =>
        {
            Assert.DoesNotContain(snapshot.Singletons, x => x.Key == HighlanderNode.RehearsalKey(idB));
            Assert.Empty(snapshot.Nodes.Single(n => n.NodeId == idB).Leading);
        });
        Assert.Equal(3, discovered.Count);
        Assert.All(discovered, leaders => Assert.DoesNotContain(leaders, l => l.Key == HighlanderNode.RehearsalKey(idB) || l.Leader.NodeId == idB));
        // The contenders are gone: at most the waiter's own session is left of its kind.
        Assert.True(await Db.ScalarAsync<long>(pg.ConnectionString, "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", "highlander-wait/" + idB) <= 1);
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
    public async Task A_node_of_several_singletons_rehearses_as_many_at_once_each_on_a_private_lock_and_leaves_none_behind()
    {
        string[] names = ["w0", "w1", "w2", "w3", "w4"];
        await using var cluster = new TestCluster(pg.ConnectionString);
        var idA = "a-" + Guid.NewGuid().ToString("N")[..6];
        var idB = "b-" + Guid.NewGuid().ToString("N")[..6];
        var a = await cluster.StartNodeAsync(idA, names, ByHand);
        foreach (var name in names)
        {
            await cluster.Recorder.WaitStartedAsync(name, node: idA);
        }

        var b = await cluster.StartNodeAsync(idB, names, ByHand);
        foreach (var name in names)
        {
            await b.WaitForLeaderAsync(name, idA);
        }

        var node = Assert.IsType<HighlanderNode>(b.Singletons);
        Assert.Equal(names.Length, node.RehearsalWidth);
        var keys = new ConcurrentQueue<long>();
        var snapshots = new ConcurrentQueue<HighlanderPG.Discovery.ClusterSnapshot>();
        var stopped = 0;
        var rounds = await node.RehearseAsync(async (leadership, _, running, stopping) =>
        {
            keys.Enqueue(leadership.Key);
            await using (var connection = new Npgsql.NpgsqlConnection(pg.ConnectionString))
            {
                await connection.OpenAsync();
                snapshots.Enqueue(await HighlanderPG.Discovery.ClusterSnapshot.ReadAsync(connection, null, "highlander"));
            }

            running();
            try
            {
                await Task.Delay(System.Threading.Timeout.Infinite, stopping);
            }
            catch (OperationCanceledException)
            {
                Interlocked.Increment(ref stopped);
            }
        }, Timeout, CancellationToken.None);

        // Every round took five private keys at once (one per singleton of the node), ran a child on each and stopped them all.
        Assert.Equal(HighlanderNode.RehearsalRounds, rounds.Select(r => r.Round));
        Assert.All(rounds, r => Assert.True(r.Ran));
        Assert.Equal([false, true, true], rounds.Select(r => r.ContenderWatched));
        long[] expected = [.. Enumerable.Range(0, names.Length).Select(i => HighlanderNode.RehearsalKey(idB, i))];
        Assert.Equal(expected.Length, expected.Distinct().Count());
        Assert.All(expected, k => Assert.True(HighlanderNode.IsRehearsalKey(idB, k)));
        Assert.False(HighlanderNode.IsRehearsalKey(idA, expected[0])); // another node's keys are its own
        Assert.Equal(3 * names.Length, keys.Count);
        Assert.All(keys, k => Assert.Contains(k, expected));
        foreach (var key in expected)
        {
            Assert.Equal(3, keys.Count(k => k == key)); // each key once per round
        }

        Assert.Equal(3 * names.Length, stopped);
        Assert.All(snapshots, snapshot =>
        {
            Assert.DoesNotContain(snapshot.Singletons, x => expected.Contains(x.Key));
            Assert.Empty(snapshot.Nodes.Single(n => n.NodeId == idB).Leading);
        });
        Assert.Equal(0, await AdvisoryLocksOfAsync(idB)); // all released before RehearseAsync returned
        Assert.DoesNotContain(cluster.Recorder.Events, e => e.Node == idB);

        // The real take-over of all five afterwards, as ever.
        var mark = cluster.Recorder.Mark();
        await a.StopAsync();
        foreach (var name in names)
        {
            await cluster.Recorder.WaitStartedAsync(name, mark, node: idB);
        }

        cluster.Recorder.AssertNoOverlap();
    }

    [Fact]
    public async Task A_node_of_many_singletons_rehearses_the_per_singleton_path_again_after_pauses()
    {
        var names = Enumerable.Range(0, HighlanderNode.TierUpWidth).Select(i => $"m{i:D2}").ToArray();
        await using var cluster = new TestCluster(pg.ConnectionString);
        var idA = "a-" + Guid.NewGuid().ToString("N")[..6];
        var a = await cluster.StartNodeAsync(idA, names, ByHand);
        foreach (var name in names)
        {
            await cluster.Recorder.WaitStartedAsync(name, node: idA);
        }

        var node = Assert.IsType<HighlanderNode>(a.Singletons);
        Assert.Equal(HighlanderNode.TierUpWidth, node.RehearsalWidth);
        var runs = 0;
        var rounds = await node.RehearseAsync(async (_, _, running, stopping) =>
        {
            Interlocked.Increment(ref runs);
            running();
            await Task.Delay(System.Threading.Timeout.Infinite, stopping).ContinueWith(_ => { }, TaskScheduler.Default);
        }, Timeout, CancellationToken.None);

        // The three ways to take over, then the extra rounds with the keys free: every child of every round ran.
        HighlanderNode.RehearsalRound[] expected = [.. HighlanderNode.RehearsalRounds, .. Enumerable.Repeat(HighlanderNode.RehearsalRound.Free, HighlanderNode.TierUpRounds)];
        Assert.Equal(expected, rounds.Select(r => r.Round));
        Assert.All(rounds, r => Assert.True(r.Ran));
        Assert.Equal(expected.Length * HighlanderNode.TierUpWidth, runs);
        Assert.Equal(names.Length, await AdvisoryLocksOfAsync(idA)); // its singletons' locks, none of the rehearsal's
        Assert.Equal(names.Length, cluster.Recorder.Events.Count(e => e.Node == idA && e.Kind == LifeKind.Started)); // its own children only, once each
        Assert.All(names, name => Assert.Equal(SingletonState.Leading, a.Singletons.Get(name)!.State));
    }

    /// <summary>
    /// The release of a registered singleton is told to <see cref="HighlanderNode.ReleasesSentInline"/> as it is written to
    /// the server, before its answer is read (the CLI lowers its priority then, docs/cli.md): while the singleton is
    /// still stopping, once per release; a rehearsal's releases (private keys) are not told.
    /// </summary>
    [Fact]
    public async Task A_release_is_told_as_it_is_sent_before_its_answer_and_a_rehearsals_release_is_not()
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        var idA = "a-" + Guid.NewGuid().ToString("N")[..6];
        var a = await cluster.StartNodeAsync(idA, ["job"], ByHand);
        await cluster.Recorder.WaitStartedAsync("job", node: idA);
        var node = Assert.IsType<HighlanderNode>(a.Singletons);
        var told = new ConcurrentQueue<SingletonState?>();
        node.ReleasesSentInline = () => told.Enqueue(node.Get("job")?.State);

        var rounds = await node.RehearseAsync(async (_, _, running, stopping) =>
        {
            running();
            await Task.Delay(System.Threading.Timeout.Infinite, stopping).ContinueWith(_ => { }, TaskScheduler.Default);
        }, Timeout, CancellationToken.None);
        Assert.All(rounds, r => Assert.True(r.Ran)); // each round released its private key: none of them was told
        Assert.Empty(told);

        await node.StopAsync(CancellationToken.None);
        Assert.Equal([SingletonState.Stopping], told); // told once, its child stopped and the answer not read yet
        Assert.Equal(SingletonState.Stopped, node.Get("job")!.State);
        Assert.Equal(0, await AdvisoryLocksOfAsync(idA));
    }

    /// <summary>
    /// A node drained while it rehearses (its private keys held) is reported as leading its singletons only: the
    /// rehearsal's keys are no singleton's (found by the CI, a drain that listed 31 of them).
    /// </summary>
    [Fact]
    public async Task A_node_drained_in_the_middle_of_its_rehearsal_is_reported_leading_its_singletons_only()
    {
        string[] names = ["d1", "d2", "d3"];
        await using var cluster = new TestCluster(pg.ConnectionString);
        var idA = "a-" + Guid.NewGuid().ToString("N")[..6];
        var a = await cluster.StartNodeAsync(idA, names, ByHand);
        foreach (var name in names)
        {
            await cluster.Recorder.WaitStartedAsync(name, node: idA);
        }

        var node = Assert.IsType<HighlanderNode>(a.Singletons);
        await using var control = new ClusterControl(pg.ConnectionString, cluster.Namespace);
        var drained = new TaskCompletionSource<DrainResult>(TaskCreationOptions.RunContinuationsAsynchronously);
        var heldThen = 0L;
        await node.RehearseAsync(async (_, _, running, stopping) =>
        {
            running();
            if (!drained.Task.IsCompleted && Interlocked.Exchange(ref heldThen, await AdvisoryLocksOfAsync(idA)) == 0)
            {
                drained.TrySetResult(await control.DrainAsync(idA, TimeSpan.FromMinutes(5)));
            }

            await Task.Delay(System.Threading.Timeout.Infinite, stopping).ContinueWith(_ => { }, TaskScheduler.Default);
        }, TimeSpan.FromSeconds(5), CancellationToken.None);

        var drain = await drained.Task.WaitAsync(Timeout);
        Assert.True(heldThen > names.Length, $"{heldThen} locks held during the round"); // the singletons' and the rehearsal's
        Assert.Equal(names.Select(n => SingletonKey.Derive(cluster.Namespace, n)).Order(), drain.Singletons.Select(s => s.Key).Order());
        await control.UndrainAsync(idA);
    }

    [Fact]
    public async Task A_leaders_rehearsal_with_a_child_that_returns_by_itself_runs_every_round_and_keeps_only_its_own_lock()
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        var idA = "a-" + Guid.NewGuid().ToString("N")[..6];
        var a = await cluster.StartNodeAsync(idA, ["job"], ByHand);
        await cluster.Recorder.WaitStartedAsync("job", node: idA);

        // A leader's waiter has nothing to watch until a contender holds the private key: it watches that one too.
        var runs = 0;
        var rounds = await Assert.IsType<HighlanderNode>(a.Singletons).RehearseAsync((_, _, _, _) =>
        {
            Interlocked.Increment(ref runs);
            return Task.CompletedTask; // ends its round without being stopped
        }, Timeout, CancellationToken.None);

        Assert.Equal(HighlanderNode.RehearsalRounds, rounds.Select(r => r.Round));
        Assert.All(rounds, r => Assert.True(r.Ran));
        Assert.Equal([false, true, true], rounds.Select(r => r.ContenderWatched));
        Assert.Equal(3, runs);
        Assert.Equal(1, await AdvisoryLocksOfAsync(idA)); // the job's, nothing of the rehearsal
        Assert.Equal(SingletonState.Leading, a.Singletons.Get("job")!.State);
        Assert.Single(cluster.Recorder.Events, e => e.Node == idA && e.Kind == LifeKind.Started); // the job's only
    }

    [Fact]
    public async Task A_drained_node_gives_its_rehearsal_up_at_the_timeout_and_a_spread_node_does_not_rehearse()
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        var idA = "a-" + Guid.NewGuid().ToString("N")[..6];
        var idB = "b-" + Guid.NewGuid().ToString("N")[..6];
        await cluster.StartNodeAsync(idA, ["job"], ByHand);
        await cluster.Recorder.WaitStartedAsync("job", node: idA);
        var b = await cluster.StartNodeAsync(idB, ["job"], ByHand);
        await b.WaitForLeaderAsync("job", idA);

        await using var control = new ClusterControl(pg.ConnectionString, cluster.Namespace);
        await control.DrainAsync(idB, TimeSpan.FromMinutes(10));
        await cluster.Logs.WaitAsync(e => e.Node == idB && e.EventId.Id == HighlanderEventIds.HoldOffs, Timeout);
        var runs = 0;
        var rounds = await Assert.IsType<HighlanderNode>(b.Singletons).RehearseAsync((_, _, _, _) =>
        {
            Interlocked.Increment(ref runs);
            return Task.CompletedTask;
        }, TimeSpan.FromSeconds(1), CancellationToken.None);
        Assert.False(Assert.Single(rounds).Ran); // the first round given up: no other is tried
        Assert.Equal(0, runs);
        Assert.Equal(0, await AdvisoryLocksOfAsync(idB));
        await control.UndrainAsync(idB);

        var spread = await cluster.StartNodeAsync("c-" + Guid.NewGuid().ToString("N")[..6], ["job"], o =>
        {
            o.Placement = SingletonPlacement.Spread;
            o.RehearseTakeOver = false;
        });
        var spreadRounds = await Assert.IsType<HighlanderNode>(spread.Singletons).RehearseAsync((_, _, _, _) =>
        {
            Interlocked.Increment(ref runs);
            return Task.CompletedTask;
        }, Timeout, CancellationToken.None);
        Assert.Empty(spreadRounds);
        Assert.Equal(0, runs);
    }

    /// <summary>
    /// HighlanderOptions.RehearseTakeOver, on by default: a node rehearses once it leads (or follows another node), on a
    /// private lock, with none of its singletons' code, and leaves no lock, fencing row, state change or child behind; the
    /// follower's real take-over then runs as always. Off, the node never rehearses.
    /// </summary>
    [Fact]
    public async Task A_node_rehearses_by_itself_once_it_leads_or_follows_and_leaves_nothing_behind()
    {
        var schema = "f_" + Guid.NewGuid().ToString("N")[..10];
        await using var cluster = new TestCluster(pg.ConnectionString);
        var idA = "a-" + Guid.NewGuid().ToString("N")[..6];
        var idB = "b-" + Guid.NewGuid().ToString("N")[..6];
        var idC = "c-" + Guid.NewGuid().ToString("N")[..6];
        void Fenced(HighlanderOptions o)
        {
            o.Fencing = true;
            o.FencingSchema = schema;
        }

        var a = await cluster.StartNodeAsync(idA, ["job"], Fenced);
        await cluster.Recorder.WaitStartedAsync("job", node: idA);
        var b = await cluster.StartNodeAsync(idB, ["job"], Fenced);
        await b.WaitForLeaderAsync("job", idA);
        var c = await cluster.StartNodeAsync(idC, ["job"], o =>
        {
            Fenced(o);
            o.RehearseTakeOver = false;
        });
        await c.WaitForLeaderAsync("job", idA);
        var changes = new ConcurrentQueue<SingletonStateChanged>();
        foreach (var node in new[] { a, b, c })
        {
            node.Singletons.StateChanged += (_, e) => changes.Enqueue(e);
        }

        await a.RehearsedAsync();
        await b.RehearsedAsync();
        var rehearsed = cluster.Logs.Entries.Where(e => e.EventId.Id == HighlanderEventIds.Rehearsed).ToList();
        Assert.Single(rehearsed, e => e.Node == idA && e.Message.Contains("ran: True", StringComparison.Ordinal));
        Assert.Single(rehearsed, e => e.Node == idB && e.Message.Contains("ran: True", StringComparison.Ordinal));
        Assert.Equal(1, await AdvisoryLocksOfAsync(idA)); // the job's
        Assert.Equal(0, await AdvisoryLocksOfAsync(idB));
        Assert.Equal(1L, await Db.ScalarAsync<long>(pg.ConnectionString, $"SELECT count(*) FROM {schema}.leases")); // the job's row only
        Assert.Single(cluster.Recorder.Events, e => e.Kind == LifeKind.Started); // the job's, on a

        // The follower that rehearsed takes the job over as always; the one that did not rehearse never did.
        var mark = cluster.Recorder.Mark();
        await a.StopAsync();
        var next = await cluster.Recorder.WaitStartedAsync("job", mark);
        Assert.Contains(next.Node, new[] { idB, idC });
        await (next.Node == idB ? c : b).WaitForLeaderAsync("job", next.Node);
        cluster.Recorder.AssertNoOverlap();
        Assert.DoesNotContain(changes, e => e.Name != "job");
        Assert.DoesNotContain(cluster.Logs.Entries, e => e.EventId.Id == HighlanderEventIds.Rehearsed && e.Node == idC);
        Assert.DoesNotContain(cluster.Logs.Entries, e => e.EventId.Id == HighlanderEventIds.RehearsalFailed);
    }

    private static void ByHand(HighlanderOptions o) => o.RehearseTakeOver = false;

    /// <summary>Advisory locks held by the node's lock session, granted (the spread membership's shared lock aside).</summary>
    private async Task<long> AdvisoryLocksOfAsync(string nodeId) => await Db.ScalarAsync<long>(pg.ConnectionString, """
        SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND l.granted AND l.mode = 'ExclusiveLock' AND a.application_name = $1
        """, "highlander/" + nodeId);
}
