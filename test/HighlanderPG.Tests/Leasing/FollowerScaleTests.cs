using System.Text.RegularExpressions;
using HighlanderPG.Testing;
using HighlanderPG.Tests.Infrastructure;
using Npgsql;

namespace HighlanderPG.Tests.Leasing;

/// <summary>
/// What a follower costs and how fast it reacts when there are several holders (issue: any leader's crash noticed as
/// fast as a watched one's; a follower's idle cost on the server independent of the number of singletons; an idle
/// cluster logs no error; the server's lock table checked at start). Each test has a throwaway server of its own, so
/// that its log is its own.
/// </summary>
public sealed partial class FollowerScaleTests
{
    /// <summary>
    /// Two holders: "a" (two keys, the one the follower's waiter blocks on) and a node process leading "ticker" (one
    /// key, the one it only polls). The follower's heartbeat is 8 s and its wait slice 7 s, so only the waiter can make it
    /// take "ticker" within the 5 s the test allows after the SIGKILL (before this change, the waiter watched one holder
    /// per slice and the other holder's crash was seen at the next heartbeat or slice). Its lease (24 s) also sets its
    /// lock-delay after the server's start: it waits that out before it follows.
    /// </summary>
    [Fact]
    public async Task A_crash_of_a_holder_the_waiter_does_not_block_on_is_seen_without_a_heartbeat()
    {
        await using var server = await LocalPostgresServer.StartAsync();
        await using var cluster = new TestCluster(server.ConnectionString);
        // The holder the waiter blocks on has the follower's long lease too, so that a load spike on the test machine
        // (a 3 s lease missed) cannot hand its singletons to the follower meanwhile.
        static void Long(HighlanderOptions o)
        {
            o.LeaseDuration = TimeSpan.FromSeconds(24);
            o.LockDelayAfterServerStart = TimeSpan.FromSeconds(24);
            o.HeartbeatInterval = TimeSpan.FromSeconds(8);
            o.WaitSlice = TimeSpan.FromSeconds(7);
        }

        await cluster.StartNodeAsync("a", ["a1", "a2"], configure: Long);
        await cluster.Recorder.WaitStartedAsync("a1", node: "a", timeout: TimeSpan.FromSeconds(60));
        await cluster.Recorder.WaitStartedAsync("a2", node: "a", timeout: TimeSpan.FromSeconds(60));
        await using var b = NodeProcess.Start(cluster, "b", server.ConnectionString);
        await cluster.Recorder.WaitStartedAsync(NodeProcess.Singleton, node: "b");

        var follower = await cluster.StartNodeAsync("c", ["a1", "a2", NodeProcess.Singleton], configure: Long);
        await follower.WaitForLeaderAsync(NodeProcess.Singleton, "b", TimeSpan.FromSeconds(60));
        await follower.WaitForLeaderAsync("a1", "a", TimeSpan.FromSeconds(60));

        // The waiter is in its slice, watching both holders (it blocks on a's key and polls b's).
        await WaitForAsync(async () => await Db.ScalarAsync<long>(server.ConnectionString,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'highlander-wait/c' AND state = 'active' AND wait_event_type = 'Lock'") == 1,
            "the follower's waiter blocking on a lock");

        var mark = cluster.Recorder.Mark();
        b.Kill();
        var started = await cluster.Recorder.WaitStartedAsync(NodeProcess.Singleton, mark, node: "c", timeout: TimeSpan.FromSeconds(5));
        Assert.Equal("c", started.Node);
        cluster.Recorder.AssertNoOverlap();
    }

    /// <summary>
    /// An idle follower of 40 singletons held by two nodes: over several wait slices, the server logs no ERROR (the
    /// waiter's lock waits end inside an exception block), and, from the moment the follower knows every holder, neither
    /// of its sessions asks pg_locks (every statement is in the server's log: log_statement = all).
    /// </summary>
    [Fact]
    public async Task An_idle_follower_logs_no_error_on_the_server_and_never_asks_pg_locks_per_heartbeat()
    {
        await using var server = await LocalPostgresServer.StartAsync(new LocalPostgresOptions
        {
            ExtraSettings = { ["log_statement"] = "all", ["log_min_messages"] = "info", ["log_line_prefix"] = "%m %a [%p] " },
        });
        await using var cluster = new TestCluster(server.ConnectionString);
        var first = Enumerable.Range(0, 20).Select(i => $"p{i:00}").ToArray();
        var second = Enumerable.Range(0, 20).Select(i => $"q{i:00}").ToArray();
        // A long lease: a load spike on a shared CI machine must not expire a lease (its retired session would then be
        // ended by the server for idle-session timeout, a FATAL line that is not what this test is about).
        static void LongLease(HighlanderOptions o)
        {
            o.LeaseDuration = TimeSpan.FromSeconds(12);
            o.LockDelayAfterServerStart = TimeSpan.FromSeconds(12);
        }

        await cluster.StartNodeAsync("a", first, configure: LongLease);
        await cluster.StartNodeAsync("b", second, configure: LongLease);
        foreach (var name in first)
        {
            await cluster.Recorder.WaitStartedAsync(name, node: "a");
        }

        foreach (var name in second)
        {
            await cluster.Recorder.WaitStartedAsync(name, node: "b");
        }

        var follower = await cluster.StartNodeAsync("c", [.. first, .. second], configure: o =>
        {
            LongLease(o);
            o.WaitSlice = TimeSpan.FromMilliseconds(300);
        });
        foreach (var name in first.Concat(second))
        {
            await follower.WaitForStateAsync(name, SingletonState.Following);
        }

        await follower.RehearsedAsync(); // its contender is a session of the waiter's name, for a moment
        var lockPid = await Db.ScalarAsync<int>(server.ConnectionString, "SELECT pid FROM pg_stat_activity WHERE application_name = 'highlander/c'");

        // Settled: the follower knows both holders (each singleton shows its leader) and its waiter watches them.
        foreach (var name in first)
        {
            await follower.WaitForLeaderAsync(name, "a");
        }

        foreach (var name in second)
        {
            await follower.WaitForLeaderAsync(name, "b");
        }

        await WaitForAsync(async () => await Db.ScalarAsync<long>(server.ConnectionString,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'highlander-wait/c' AND state = 'active'") == 1,
            "the follower's waiter in its slice");
        var waitPid = await Db.ScalarAsync<int>(server.ConnectionString, "SELECT pid FROM pg_stat_activity WHERE application_name = 'highlander-wait/c'");
        var from = new FileInfo(server.LogFile).Length;

        // Idle for at least eight heartbeats (500 ms) and many wait slices (300 ms), seen in the log itself.
        await WaitForAsync(() => Task.FromResult(StatementsOf(server.LogFile, from, lockPid).Count(s => s.Contains("pg_backend_pid", StringComparison.Ordinal)) >= 8),
            "eight heartbeats of the follower", TimeSpan.FromSeconds(30));
        var lockStatements = StatementsOf(server.LogFile, from, lockPid);
        var waitStatements = StatementsOf(server.LogFile, from, waitPid);

        Assert.True(waitStatements.Count(s => s.Contains("DO $watch$", StringComparison.Ordinal)) >= 3, "wait slices seen: " + string.Join("\n", waitStatements));
        Assert.DoesNotContain(lockStatements.Concat(waitStatements), s => s.Contains("pg_locks", StringComparison.Ordinal));
        // Before the idle window, each node's own rehearsal (HighlanderOptions.RehearseTakeOver) may have shown its waiter
        // a holder it did not watch yet (its contender), twice at most per node: the watch is cancelled then (57014), as
        // for any new holder (docs/lease-protocol.md, "Rehearsal"); a leader's waiter watches its contender too (a CI run
        // saw it on "a"). Nothing else, and nothing at all while idle.
        var startup = ReadBefore(server.LogFile, from).Split('\n').Where(l => ErrorLine().IsMatch(l)).ToList();
        static bool RehearsalCancel(string line, string node) =>
            line.Contains($" highlander-wait/{node} [", StringComparison.Ordinal) && line.Contains("canceling statement due to user request", StringComparison.Ordinal);
        string[] nodes = ["a", "b", "c"];
        Assert.All(nodes, node => Assert.True(startup.Count(l => RehearsalCancel(l, node)) <= 2, string.Join("\n", startup)));
        var errors = startup.Where(l => !nodes.Any(node => RehearsalCancel(l, node)))
            .Concat(ReadFrom(server.LogFile, from).Split('\n').Where(l => ErrorLine().IsMatch(l)))
            .ToList();
        var log = ReadFrom(server.LogFile, 0);
        Assert.True(errors.Count == 0, "the server logged at ERROR or above:\n" + string.Join("\n", errors) + "\nwhat those sessions did last:\n" + string.Join("\n", errors
            .Select(e => e[e.IndexOf('[', StringComparison.Ordinal)..(e.IndexOf(']', StringComparison.Ordinal) + 1)])
            .Distinct()
            .SelectMany(pid => log.Split('\n').Where(l => l.Contains(pid, StringComparison.Ordinal)).TakeLast(8)))
            + "\nthe nodes' log (information and above):\n" + cluster.Logs.Describe());
        Assert.DoesNotContain(cluster.Recorder.Events, e => e.Node == "c");
    }

    /// <summary>A server whose lock table cannot hold the node's singletons is refused at start, naming the setting; nothing runs.</summary>
    [Fact]
    public async Task A_node_with_more_singletons_than_the_servers_lock_table_holds_is_refused_naming_the_setting()
    {
        // 10 x (20 + 0) = 200 locks in all.
        await using var server = await LocalPostgresServer.StartAsync(new LocalPostgresOptions
        {
            ExtraSettings = { ["max_locks_per_transaction"] = "10", ["max_connections"] = "20" },
        });
        await using var cluster = new TestCluster(server.ConnectionString);
        var tooMany = Enumerable.Range(0, 201).Select(i => $"s{i:000}").ToArray();
        var node = await cluster.StartNodeAsync("big", tooMany);

        var refused = await cluster.Logs.WaitAsync(e => e.EventId.Id == HighlanderPG.Diagnostics.HighlanderEventIds.Refused);
        Assert.Contains("max_locks_per_transaction", refused.Message, StringComparison.Ordinal);
        Assert.Contains("201 singletons", refused.Message, StringComparison.Ordinal);
        Assert.Equal(SingletonState.Disconnected, node.Singletons.Get("s000")!.State);
        Assert.Contains("max_locks_per_transaction", node.Singletons.Get("s000")!.LastError, StringComparison.Ordinal);
        Assert.Empty(cluster.Recorder.Events);

        // At the capacity, it runs.
        await node.StopAsync();
        var fits = await cluster.StartNodeAsync("fits", [.. tooMany.Take(200)]);
        await cluster.Recorder.WaitStartedAsync("s199", node: "fits");
    }

    private static List<string> StatementsOf(string logFile, long from, int pid)
    {
        var marker = $"[{pid}] LOG:  ";
        return ReadFrom(logFile, from).Split('\n')
            .Where(l => l.Contains(marker, StringComparison.Ordinal) && (l.Contains("statement:", StringComparison.Ordinal) || l.Contains("execute", StringComparison.Ordinal)))
            .ToList();
    }

    private static string ReadBefore(string logFile, long end)
    {
        using var stream = new FileStream(logFile, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        var bytes = new byte[end];
        stream.ReadExactly(bytes);
        return System.Text.Encoding.UTF8.GetString(bytes);
    }

    private static string ReadFrom(string logFile, long from)
    {
        using var stream = new FileStream(logFile, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        stream.Seek(from, SeekOrigin.Begin);
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd();
    }

    private static async Task WaitForAsync(Func<Task<bool>> condition, string what, TimeSpan? timeout = null)
    {
        using var cts = new CancellationTokenSource(timeout ?? TimeSpan.FromSeconds(30));
        while (!await condition())
        {
            Assert.False(cts.IsCancellationRequested, $"timed out waiting for {what}");
            await Task.Delay(50);
        }
    }

    [GeneratedRegex(@"\] (ERROR|FATAL|PANIC): ")]
    private static partial Regex ErrorLine();
}
