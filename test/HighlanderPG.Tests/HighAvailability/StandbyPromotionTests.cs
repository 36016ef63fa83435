using HighlanderPG.Diagnostics;
using HighlanderPG.Discovery;
using HighlanderPG.Fencing;
using HighlanderPG.Testing;
using HighlanderPG.Tests.Infrastructure;
using Microsoft.Extensions.DependencyInjection;
using Npgsql;
using Xunit.Abstractions;

namespace HighlanderPG.Tests.HighAvailability;

/// <summary>
/// A real physical standby (<c>pg_basebackup -R</c>) promoted while nodes with a multi-host connection string run
/// singletons with fencing on. Each test has a primary and a standby of its own.
/// </summary>
public sealed class StandbyPromotionTests(ITestOutputHelper output)
{
    private static readonly string[] Singletons = ["s1", "s2", "s3"];

    private static readonly TimeSpan TestClusterLockDelay = TimeSpan.FromSeconds(3);

    [Fact]
    public async Task With_synchronous_replication_a_promotion_keeps_one_child_per_singleton_epochs_increasing_and_stale_writes_refused()
    {
        await using var primary = await LocalPostgresServer.StartAsync(new LocalPostgresOptions { ExtraSettings = { ["synchronous_commit"] = "on" } });
        await using var standby = await primary.CreateStandbyAsync("replica1");
        await MakeSynchronousAsync(primary, "replica1");
        await Db.ScalarAsync<int>(primary.ConnectionString, GuardedWrites.Ddl);

        // The standby is listed first: the nodes must still lead on the primary only.
        var connectionString = MultiHost(standby, primary, "Target Session Attributes=primary");
        await using var writes = new GuardedWrites(connectionString);
        await using var cluster = new TestCluster(connectionString);
        var nodes = new List<TestNode>();
        foreach (var node in new[] { "a", "b", "c" })
        {
            nodes.Add(await StartWriterNodeAsync(cluster, writes, node));
        }

        var before = new Dictionary<string, LifeEvent>();
        foreach (var name in Singletons)
        {
            before[name] = await cluster.Recorder.WaitStartedAsync(name);
        }

        // Every lock is held on the primary, none on the standby listed first.
        foreach (var name in Singletons)
        {
            Assert.NotNull(await Db.HolderPidAsync(primary.ConnectionString, SingletonKey.Derive(cluster.Namespace, name)));
        }

        Assert.Equal(0L, await Db.ScalarAsync<long>(standby.ConnectionString, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"));

        // Discovery (and `highlander status`) with the standby first and no Target Session Attributes finds the leaders on the primary.
        var discoveryString = MultiHost(standby, primary, null);
        var seen = await LeaderDiscovery.ListAsync(discoveryString, Singletons, cluster.Namespace);
        Assert.Equal(Singletons.Order(), seen.Select(l => l.Name!).Order());

        // Guarded writes land (and, being synchronous, reach the standby before they commit).
        await WaitUntilAsync(() => Task.FromResult(writes.Committed >= 6), "the leaders' guarded writes");

        var mark = cluster.Recorder.Mark();
        var stopping = DateTimeOffset.Now;
        await primary.StopAsync(ShutdownMode.Immediate);
        var promoting = DateTimeOffset.Now;
        await standby.PromoteAsync();
        var promoted = DateTimeOffset.Now;

        var after = new Dictionary<string, LifeEvent>();
        foreach (var name in Singletons)
        {
            after[name] = await cluster.Recorder.WaitStartedAsync(name, mark);
        }

        // Not asserted (the machine is shared): how long the failover took, for the report.
        output.WriteLine(
            $"primary stop {(promoting - stopping).TotalSeconds:F2}s, promotion {(promoted - promoting).TotalSeconds:F2}s, " +
            $"first new child {(after.Values.Min(e => e.At) - promoted).TotalSeconds:F2}s and last {(after.Values.Max(e => e.At) - promoted).TotalSeconds:F2}s after the promotion " +
            $"(lock-delay {TestClusterLockDelay.TotalSeconds:F0}s from each node's reconnect)");

        // The nodes saw another server and waited the lock-delay from their reconnect (which came after the promotion began:
        // until then no host was a primary).
        Assert.All(after.Values, e => Assert.True(e.At - promoting >= TestClusterLockDelay, $"{e.Singleton} started on {e.Node} {(e.At - promoting).TotalSeconds:F2}s after the promotion began, inside the lock-delay"));
        Assert.Contains(cluster.Logs.Entries, e => e.EventId.Id == HighlanderEventIds.ServerChanged && e.Message.Contains("timeline", StringComparison.Ordinal));

        // Exactly one child per singleton, with no overlap across the failover (every old child stopped before a new one started).
        cluster.Recorder.AssertNoOverlap();
        foreach (var name in Singletons)
        {
            Assert.Equal(1, Running(cluster.Recorder, name));
        }

        var leading = await WaitForLeadersAsync(nodes);
        Assert.All(Singletons, name => Assert.Equal(1, leading.Count(l => l == name)));

        // Epochs strictly increasing per singleton, across the failover (synchronous replication kept every bump).
        foreach (var name in Singletons)
        {
            var epochs = cluster.Recorder.Events.Where(e => e.Kind == LifeKind.Started && e.Singleton == name).Select(e => long.Parse(e.Token!)).ToList();
            Assert.True(epochs.Zip(epochs.Skip(1)).All(p => p.Second > p.First), $"{name}: epochs {string.Join(", ", epochs)}\n{cluster.Recorder.Describe()}");
            Assert.True(long.Parse(after[name].Token!) > long.Parse(before[name].Token!));
        }

        // A write of the old leader, with its epoch, is refused by the new primary; the new leader's lands.
        var newPrimary = standby.ConnectionString;
        await using (var connection = new NpgsqlConnection(newPrimary))
        {
            await connection.OpenAsync();
            await using var tx = await connection.BeginTransactionAsync();
            await Assert.ThrowsAsync<StaleEpochException>(() => FencingGuard.AssertEpochAsync(tx, "s1", long.Parse(before["s1"].Token!), cluster.Namespace));
        }

        // The current leader's guarded writes land. Its epoch is read afresh: on a busy machine a leader after the
        // failover may lose its lease too (a round trip held past it), and the next leadership then has the next epoch.
        foreach (var name in Singletons)
        {
            await WaitUntilAsync(async () => (await EpochsWrittenAsync(newPrimary, name)).Contains(LatestEpoch(cluster.Recorder, name)), $"{name}'s current leader's guarded write");
        }

        // Every guarded write that reached the new primary, in commit order: epochs never go back for a singleton.
        foreach (var name in Singletons)
        {
            var written = await EpochsWrittenAsync(newPrimary, name);
            Assert.True(written.Zip(written.Skip(1)).All(p => p.Second >= p.First), $"{name}: guarded writes' epochs {string.Join(", ", written.Distinct())}");
        }

        // Discovery with the same string finds the current leaders on the promoted standby.
        await WaitUntilAsync(
            async () =>
            {
                seen = await LeaderDiscovery.ListAsync(discoveryString, Singletons, cluster.Namespace);
                return seen.Count == Singletons.Length && seen.All(l => l.FencingEpoch == LatestEpoch(cluster.Recorder, l.Name!));
            },
            "discovery to find every current leader with its epoch");
        Assert.Equal(Singletons.Order(), seen.Select(l => l.Name!).Order());
    }

    [Fact]
    public async Task With_asynchronous_replication_a_promotion_can_lose_an_epoch_bump_and_an_epoch_is_then_given_twice()
    {
        // The rig's default: synchronous_commit = off, no synchronous standby (asynchronous replication).
        await using var primary = await LocalPostgresServer.StartAsync();
        await using var standby = await primary.CreateStandbyAsync("replica1");
        await Db.ScalarAsync<int>(primary.ConnectionString, GuardedWrites.Ddl);

        var connectionString = MultiHost(primary, standby, null);
        await using var writes = new GuardedWrites(connectionString);
        await using var cluster = new TestCluster(connectionString);
        var first = await StartWriterNodeAsync(cluster, writes, "a", ["job"]);
        var e1 = await cluster.Recorder.WaitStartedAsync("job", node: "a");
        await StartWriterNodeAsync(cluster, writes, "b", ["job"]);

        // The standby has replayed the first leader's bump; then it stops receiving WAL (a lagging replica, made deterministic).
        var epoch1 = long.Parse(e1.Token!);
        await WaitUntilAsync(async () => await EpochAsync(standby.ConnectionString, cluster.Namespace) == epoch1, "the standby to replay the first bump");
        await Db.ScalarAsync<bool>(standby.ConnectionString, "ALTER SYSTEM SET primary_conninfo = ''");
        await Db.ScalarAsync<bool>(standby.ConnectionString, "SELECT pg_reload_conf()");
        await WaitUntilAsync(async () => await Db.ScalarAsync<long>(primary.ConnectionString, "SELECT count(*) FROM pg_stat_replication") == 0, "the standby to stop streaming");

        // A hand-over on the primary bumps the epoch; the bump never reaches the standby.
        var mark = cluster.Recorder.Mark();
        await first.StopAsync();
        var e2 = await cluster.Recorder.WaitStartedAsync("job", mark, node: "b");
        var epoch2 = long.Parse(e2.Token!);
        Assert.Equal(epoch1 + 1, epoch2);

        mark = cluster.Recorder.Mark();
        await primary.StopAsync(ShutdownMode.Immediate);
        await standby.PromoteAsync();
        var e3 = await cluster.Recorder.WaitStartedAsync("job", mark);

        // Still one child at a time (the lock-delay after the server change), but the promoted standby never saw the bump
        // to epoch2: the next leadership gets epoch2 again. Fencing cannot tell these two leaderships apart.
        cluster.Recorder.AssertNoOverlap();
        Assert.Contains(cluster.Logs.Entries, e => e.EventId.Id == HighlanderEventIds.ServerChanged);
        Assert.Equal(epoch2, long.Parse(e3.Token!));

        // A guarded write of the old primary's leadership of epoch2 would pass on the new primary.
        await using var connection = new NpgsqlConnection(standby.ConnectionString);
        await connection.OpenAsync();
        await using var tx = await connection.BeginTransactionAsync();
        await FencingGuard.AssertEpochAsync(tx, "job", epoch2, cluster.Namespace);
    }

    [Fact]
    public async Task A_node_without_target_session_attributes_leads_on_the_primary_even_with_the_standby_listed_first()
    {
        await using var primary = await LocalPostgresServer.StartAsync();
        await using var standby = await primary.CreateStandbyAsync("replica1");
        await using var cluster = new TestCluster(MultiHost(standby, primary, null));
        var node = await cluster.StartNodeAsync("a");
        await cluster.Recorder.WaitStartedAsync("job", node: "a");

        Assert.DoesNotContain(cluster.Logs.Entries, e => e.EventId.Id == HighlanderEventIds.Refused);
        Assert.NotNull(await Db.HolderPidAsync(primary.ConnectionString, SingletonKey.Derive(cluster.Namespace, "job")));
        Assert.Equal(SingletonState.Leading, node.Singletons.Get("job")!.State);

        // Discovery (and `highlander status`) finds it on the primary even when told Target Session Attributes=any.
        var seen = await LeaderDiscovery.ListAsync(MultiHost(standby, primary, "Target Session Attributes=any"), ["job"], cluster.Namespace);
        Assert.Equal("job", Assert.Single(seen).Name);
    }

    [Fact]
    public async Task A_node_whose_first_session_is_on_a_fresh_promotion_waits_the_lock_delay_when_it_can_see_the_walwriter()
    {
        await using var primary = await LocalPostgresServer.StartAsync();
        await using var standby = await primary.CreateStandbyAsync("replica1");
        await primary.StopAsync(ShutdownMode.Immediate);
        await standby.PromoteAsync();

        // A node process started during the failover: no earlier session to compare with. As superuser it sees the
        // walwriter, which starts when the promotion ends, so the promotion counts as the server's start.
        await using var cluster = new TestCluster(MultiHost(primary, standby, null));
        await cluster.StartNodeAsync("fresh");
        await cluster.Recorder.WaitStartedAsync("job", node: "fresh");
        var sincePromotion = await Db.ScalarAsync<double>(
            standby.ConnectionString,
            "SELECT extract(epoch from clock_timestamp() - (SELECT backend_start FROM pg_stat_activity WHERE backend_type = 'walwriter'))::float8");
        var postmasterUptime = await Db.ScalarAsync<double>(standby.ConnectionString, "SELECT extract(epoch from clock_timestamp() - pg_postmaster_start_time())::float8");

        Assert.True(postmasterUptime > sincePromotion, "the promoted standby's postmaster started before the promotion");
        Assert.True(sincePromotion >= 3.0, $"a child started {sincePromotion:F2}s after the promotion, inside the 3s lock-delay");
        Assert.Contains(cluster.Logs.Entries, e => e.EventId.Id == HighlanderEventIds.LockDelay);
    }

    private static string MultiHost(LocalPostgresServer first, LocalPostgresServer second, string? extra)
    {
        var builder = new NpgsqlConnectionStringBuilder(first.ConnectionString)
        {
            Host = $"{first.Host}:{first.Port},{second.Host}:{second.Port}",
        };
        return extra is null ? builder.ConnectionString : builder.ConnectionString + ";" + extra;
    }

    private static async Task<TestNode> StartWriterNodeAsync(TestCluster cluster, GuardedWrites writes, string nodeId, string[]? singletons = null) =>
        await cluster.StartNodeAsync(
            nodeId,
            singletons: [],
            configure: o => o.Fencing = true,
            services: s =>
            {
                s.AddSingleton(writes);
                foreach (var name in singletons ?? Singletons)
                {
                    s.AddClusterSingleton<GuardedWriterService>(name);
                }
            });

    private static async Task MakeSynchronousAsync(LocalPostgresServer primary, string standbyName)
    {
        await Db.ScalarAsync<bool>(primary.ConnectionString, $"ALTER SYSTEM SET synchronous_standby_names = '{standbyName}'");
        await Db.ScalarAsync<bool>(primary.ConnectionString, "SELECT pg_reload_conf()");
        await WaitUntilAsync(
            async () => await Db.ScalarAsync<string>(primary.ConnectionString, "SELECT sync_state FROM pg_stat_replication WHERE application_name = $1", standbyName) == "sync",
            "the standby to become synchronous");
    }

    private static Task<long> EpochAsync(string connectionString, string @namespace) =>
        Db.ScalarAsync<long>(connectionString, "SELECT coalesce((SELECT epoch FROM highlander.leases WHERE namespace = $1 AND name = 'job'), 0)", @namespace);

    private static async Task<List<long>> EpochsWrittenAsync(string connectionString, string singleton)
    {
        await using var connection = new NpgsqlConnection(connectionString);
        await connection.OpenAsync();
        await using var cmd = new NpgsqlCommand($"SELECT epoch FROM {GuardedWrites.Table} WHERE singleton = $1 ORDER BY seq", connection);
        cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = singleton });
        await using var reader = await cmd.ExecuteReaderAsync();
        var epochs = new List<long>();
        while (await reader.ReadAsync())
        {
            epochs.Add(reader.GetInt64(0));
        }

        return epochs;
    }

    /// <summary>The fencing epoch of the last child of <paramref name="singleton"/> started, by the journal.</summary>
    private static long LatestEpoch(LifeJournal journal, string singleton) =>
        long.Parse(journal.Events.Last(e => e.Kind == LifeKind.Started && e.Singleton == singleton).Token!, System.Globalization.CultureInfo.InvariantCulture);

    /// <summary>How many children of <paramref name="singleton"/> run, by the journal (starts not followed by their node's stop).</summary>
    private static int Running(LifeJournal journal, string singleton)
    {
        var running = new HashSet<string>();
        foreach (var e in journal.Events.Where(e => e.Singleton == singleton))
        {
            if (e.Kind == LifeKind.Started)
            {
                running.Add(e.Node);
            }
            else if (e.Kind is LifeKind.Stopped or LifeKind.Killed or LifeKind.Failed)
            {
                running.Remove(e.Node);
            }
        }

        return running.Count;
    }

    /// <summary>The singletons each node reports leading, once every singleton is led by some node.</summary>
    private static async Task<List<string>> WaitForLeadersAsync(List<TestNode> nodes)
    {
        List<string> leading = [];
        await WaitUntilAsync(
            () =>
            {
                leading = [.. nodes.SelectMany(n => n.Singletons.GetAll()).Where(s => s.State == SingletonState.Leading).Select(s => s.Name)];
                return Task.FromResult(Singletons.All(leading.Contains));
            },
            "every singleton to be led");
        return leading;
    }

    private static async Task WaitUntilAsync(Func<Task<bool>> condition, string what)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (!await condition())
        {
            Assert.True(DateTime.UtcNow < deadline, $"timed out waiting for {what}");
            await Task.Delay(50);
        }
    }
}
