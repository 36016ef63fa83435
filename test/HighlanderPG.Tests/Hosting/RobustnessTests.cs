using HighlanderPG.Testing;
using HighlanderPG.Tests.Infrastructure;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace HighlanderPG.Tests.Hosting;

/// <summary>What a child or a fault must not be able to do to the engine.</summary>
[Collection(SharedServer.Name)]
public sealed class RobustnessTests(PostgresFixture pg)
{
    /// <summary>A child whose cancellation callback blocks must not hold up the stop of the node's other children.</summary>
    [Fact]
    public async Task A_child_blocking_in_its_cancellation_callback_does_not_delay_the_other_childrens_stop()
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        await using var proxy = FaultTests.ProxyTo(pg.ConnectionString);
        var blockers = new List<ManualResetEventSlim>();
        var released = false;
        void Blocking(IServiceCollection s) => s.AddClusterSingleton("blocker", async (leadership, _, ct) =>
        {
            // Once the test has released the blockers, a new one does not block: else its node's shutdown would rightly
            // escalate it (its registration's Dispose waits for the callback, so its ExecuteAsync would not return in time).
            var gate = new ManualResetEventSlim();
            lock (blockers)
            {
                blockers.Add(gate);
                if (released)
                {
                    gate.Set();
                }
            }

            // Synchronous work in a cancellation callback: runs on whatever thread cancels.
            using var registration = ct.Register(() => gate.Wait(TimeSpan.FromSeconds(4)));
            cluster.Recorder.Record(leadership.NodeId, "blocker", LifeKind.Started);
            await Task.Delay(Timeout.Infinite, ct).ContinueWith(_ => { }, TaskScheduler.Default);
            cluster.Recorder.Record(leadership.NodeId, "blocker", LifeKind.Stopped);
        });

        var cut = await cluster.StartNodeAsync("cut", connectionString: proxy.ConnectionString(pg.ConnectionString), services: Blocking, configure: o => o.OnEscalation = ctx =>
        {
            cluster.Recorder.Record(ctx.NodeId, ctx.Singleton, LifeKind.Escalated, ctx.Reason);
            return ValueTask.CompletedTask;
        });
        await cut.WaitForStateAsync("job", SingletonState.Leading);
        await cut.WaitForStateAsync("blocker", SingletonState.Leading);
        var other = await cluster.StartNodeAsync("other", services: Blocking);
        await other.WaitForLeaderAsync("job", "cut");

        var mark = cluster.Recorder.Mark();
        proxy.SetMode(ProxyMode.Blackhole);
        var stopped = await cluster.Recorder.WaitStoppedAsync("job", "cut", mark);
        var next = await cluster.Recorder.WaitStartedAsync("job", mark, node: "other");
        Assert.True(stopped.Seq < next.Seq, cluster.Recorder.Describe());
        lock (blockers)
        {
            released = true;
            blockers.ForEach(b => b.Set());
        }

        await cluster.Recorder.WaitStartedAsync("blocker", mark, node: "other");
        cluster.Recorder.AssertNoOverlap();
    }

    /// <summary>At shutdown too: a child blocking in its cancellation callback does not hold up the other children's stop.</summary>
    [Fact]
    public async Task At_shutdown_a_child_blocking_in_its_cancellation_callback_does_not_delay_the_others()
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        using var gate = new ManualResetEventSlim();

        // The blocker is led last, so its runner's registrations are the newest: cancelling one token shared by all runners
        // would run its callback first, and the job's stop would wait on it.
        await using var squatter = new Npgsql.NpgsqlConnection(pg.ConnectionString);
        await squatter.OpenAsync();
        var blockerKey = SingletonKey.Derive(cluster.Namespace, "blocker");
        await using (var hold = new Npgsql.NpgsqlCommand("SELECT pg_advisory_lock($1)", squatter) { Parameters = { new() { Value = blockerKey } } })
        {
            await hold.ExecuteNonQueryAsync();
        }

        var node = await cluster.StartNodeAsync("stopping", services: s => s.AddClusterSingleton("blocker", async (leadership, _, ct) =>
        {
            using var registration = ct.Register(() => gate.Wait(TimeSpan.FromSeconds(30)));
            cluster.Recorder.Record(leadership.NodeId, "blocker", LifeKind.Started);
            await Task.Delay(Timeout.Infinite, ct).ContinueWith(_ => { }, TaskScheduler.Default);
        }), configure: o => o.OnEscalation = ctx =>
        {
            cluster.Recorder.Record(ctx.NodeId, ctx.Singleton, LifeKind.Escalated, ctx.Reason);
            gate.Set(); // what ending the process would do to the blocked callback
            return ValueTask.CompletedTask;
        });
        await node.WaitForStateAsync("job", SingletonState.Leading);
        await using (var release = new Npgsql.NpgsqlCommand("SELECT pg_advisory_unlock($1)", squatter) { Parameters = { new() { Value = blockerKey } } })
        {
            await release.ExecuteNonQueryAsync();
        }

        await node.WaitForStateAsync("blocker", SingletonState.Leading);

        var mark = cluster.Recorder.Mark();
        await node.StopAsync().WaitAsync(TimeSpan.FromSeconds(60));

        // The blocker is escalated when its stop time runs out; the job, told on its own, stopped long before that.
        var stopped = cluster.Recorder.Events.Single(e => e.Seq >= mark && e.Singleton == "job" && e.Kind == LifeKind.Stopped);
        var escalated = cluster.Recorder.Events.Single(e => e.Seq >= mark && e.Singleton == "blocker" && e.Kind == LifeKind.Escalated);
        Assert.True(stopped.Seq < escalated.Seq, cluster.Recorder.Describe());
    }

    /// <summary>
    /// The node's stop runs once: a second caller (the CLI's signal handler, then the host; the host, then DisposeAsync)
    /// waits for that same stop, and never returns while a child still runs.
    /// </summary>
    [Fact]
    public async Task A_second_stop_waits_for_the_first_to_end()
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        var running = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var stopAsked = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var letGo = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var node = await cluster.StartNodeAsync("twice", services: s => s.AddClusterSingleton("slow", async (leadership, _, ct) =>
        {
            running.TrySetResult();
            await Task.Delay(Timeout.Infinite, ct).ContinueWith(_ => { }, TaskScheduler.Default);
            stopAsked.TrySetResult();
            await letGo.Task; // still stopping
        }), configure: o =>
        {
            // Room for a slow machine between the child being told and the test letting it go, well within the budget.
            o.LeaseDuration = TimeSpan.FromSeconds(8);
            o.StopTimeout = TimeSpan.FromSeconds(4);
            o.LockDelayAfterServerStart = o.LeaseDuration;
        });
        await running.Task.WaitAsync(TimeSpan.FromSeconds(30));

        var hosted = Assert.IsType<HighlanderPG.Hosting.HighlanderNode>(node.Singletons);
        var first = hosted.StopAsync(CancellationToken.None);
        Task second;
        bool secondEndedEarly;
        try
        {
            await stopAsked.Task.WaitAsync(TimeSpan.FromSeconds(30));
            second = hosted.StopAsync(CancellationToken.None);
            secondEndedEarly = second.IsCompleted;
        }
        finally
        {
            letGo.TrySetResult();
        }

        await Task.WhenAll(first, second).WaitAsync(TimeSpan.FromSeconds(30));
        Assert.False(secondEndedEarly); // it waited while the child had not returned yet
        Assert.Equal(SingletonState.Stopped, node.Singletons.Get("slow")!.State);
    }

    /// <summary>A step-down asked for while the session is cut off completes (the lock goes with the session), and so does shutdown.</summary>
    [Fact]
    public async Task Step_down_and_shutdown_complete_while_the_node_is_cut_off()
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        await using var proxy = FaultTests.ProxyTo(pg.ConnectionString);
        // Npgsql's timeouts longer than the test's bounds: the stop must not wait for a connection attempt or a command
        // to the silent server to time out (a CI run's stop waited for the take-over rehearsal's contender to connect).
        var slow = new Npgsql.NpgsqlConnectionStringBuilder(proxy.ConnectionString(pg.ConnectionString)) { Timeout = 60, CommandTimeout = 60 };
        var node = await cluster.StartNodeAsync("cut", connectionString: slow.ConnectionString);
        await node.WaitForStateAsync("job", SingletonState.Leading);

        proxy.SetMode(ProxyMode.Blackhole);
        await node.Singletons.StepDownAsync("job").WaitAsync(TimeSpan.FromSeconds(30));
        Assert.NotEqual(SingletonState.Leading, node.Singletons.Get("job")!.State);
        await node.StopAsync().WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(SingletonState.Stopped, node.Singletons.Get("job")!.State);
    }

    /// <summary>A child whose Dispose throws still has its lock released, and the singleton runs on.</summary>
    [Fact]
    public async Task A_child_that_throws_in_Dispose_does_not_keep_the_lock()
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        var a = await cluster.StartNodeAsync("a", singletons: [], services: s => s.AddClusterSingleton<ThrowsOnDispose>("job"));
        await a.WaitForStateAsync("job", SingletonState.Leading);
        var b = await cluster.StartNodeAsync("b");
        await b.WaitForLeaderAsync("job", "a");

        await a.Singletons.StepDownAsync("job").WaitAsync(TimeSpan.FromSeconds(30));
        await cluster.Recorder.WaitStartedAsync("job", node: "b");
        cluster.Recorder.AssertNoOverlap();
    }

    private sealed class ThrowsOnDispose : BackgroundService
    {
        protected override Task ExecuteAsync(CancellationToken stoppingToken) => Task.Delay(Timeout.Infinite, stoppingToken);

        public override void Dispose()
        {
            base.Dispose();
            throw new InvalidOperationException("dispose failure injected by the test");
        }
    }

    /// <summary>A fencing bump that fails (a name moved to an explicit key) neither loses the session nor the epoch order.</summary>
    [Fact]
    public async Task A_name_moved_to_an_explicit_key_keeps_its_epochs_increasing()
    {
        var schema = "f_" + Guid.NewGuid().ToString("N")[..10];
        await using var cluster = new TestCluster(pg.ConnectionString);
        var first = await cluster.StartNodeAsync("derived", configure: o => { o.Fencing = true; o.FencingSchema = schema; });
        var epoch = (await first.WaitForStateAsync("job", SingletonState.Leading)).FencingEpoch!.Value;
        await first.StopAsync();

        var moved = await cluster.StartNodeAsync("explicit", singletons: [], configure: o => { o.Fencing = true; o.FencingSchema = schema; },
            services: s => s.AddClusterSingleton<RecordingService>("job", o => o.Key = SingletonKey.Derive(cluster.Namespace, "job") ^ 0x5A5A));
        var now = await moved.WaitForStateAsync("job", SingletonState.Leading);
        Assert.True(now.FencingEpoch > epoch, $"epoch {now.FencingEpoch} after {epoch}");
    }

    /// <summary>
    /// A backend crash makes the server reinitialise: every lock is gone but pg_postmaster_start_time() stays. No node
    /// may take a lock before the lock-delay has passed since then.
    /// </summary>
    [Fact]
    public async Task After_a_backend_crash_no_child_starts_before_the_lock_delay()
    {
        await using var server = await LocalPostgresServer.StartAsync();
        await using var cluster = new TestCluster(server.ConnectionString);
        var a = await cluster.StartNodeAsync("a");
        await cluster.Recorder.WaitStartedAsync("job", node: "a");
        var b = await cluster.StartNodeAsync("b");
        await b.WaitForLeaderAsync("job", "a");

        // Any backend's crash makes the server reinitialise; take the follower's lock session (connected, since it follows).
        var victim = await Db.ScalarAsync<int>(server.ConnectionString, "SELECT pid FROM pg_stat_activity WHERE application_name = 'highlander/b'");
        Assert.True(victim > 0, "no backend to crash"); // never `kill -9 0`: that would kill the test's own process group
        var mark = cluster.Recorder.Mark();
        using (var kill = System.Diagnostics.Process.Start("kill", ["-9", victim.ToString(System.Globalization.CultureInfo.InvariantCulture)]))
        {
            await kill.WaitForExitAsync();
            Assert.Equal(0, kill.ExitCode);
        }

        await cluster.Recorder.WaitStoppedAsync("job", "a", mark);
        await cluster.Recorder.WaitStartedAsync("job", mark);
        var sinceReinit = await Db.ScalarAsync<double>(server.ConnectionString,
            "SELECT extract(epoch from now() - (SELECT backend_start FROM pg_stat_activity WHERE backend_type = 'checkpointer'))::float8");
        Assert.True(sinceReinit >= 3.0, $"a child started {sinceReinit:F2}s after the server reinitialised, inside the 3s lock-delay");
        cluster.Recorder.AssertNoOverlap();
    }
}
