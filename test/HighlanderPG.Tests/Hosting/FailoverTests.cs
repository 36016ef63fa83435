using HighlanderPG.Diagnostics;
using HighlanderPG.Tests.Infrastructure;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace HighlanderPG.Tests.Hosting;

[Collection(SharedServer.Name)]
public sealed class FailoverTests(PostgresFixture pg)
{
    [Fact]
    public async Task Only_one_of_three_nodes_runs_the_child_and_a_stopped_leader_hands_over()
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        var nodes = new[]
        {
            await cluster.StartNodeAsync("n1"),
            await cluster.StartNodeAsync("n2"),
            await cluster.StartNodeAsync("n3"),
        };

        var first = await cluster.Recorder.WaitStartedAsync("job");
        var leader = nodes.Single(n => n.NodeId == first.Node);
        Assert.Equal(SingletonState.Leading, (await leader.WaitForStateAsync("job", SingletonState.Leading)).State);

        // The followers know who leads, from pg_locks and the leader's application_name.
        foreach (var follower in nodes.Where(n => n != leader))
        {
            var status = await follower.WaitForLeaderAsync("job", leader.NodeId);
            Assert.NotNull(status.Leader!.SessionStarted);
        }

        var mark = cluster.Recorder.Mark();
        await leader.StopAsync();
        var stopped = await cluster.Recorder.WaitStoppedAsync("job", leader.NodeId, mark);
        var next = await cluster.Recorder.WaitStartedAsync("job", mark, notNode: leader.NodeId);
        Assert.True(stopped.Seq < next.Seq, cluster.Recorder.Describe());
        cluster.Recorder.AssertNoOverlap();

        // A graceful hand-over is announced: the logs show the release with its reason.
        Assert.Contains(cluster.Logs.Entries, e => e.Node == leader.NodeId && e.EventId.Id == HighlanderEventIds.Released);
    }

    [Fact]
    public async Task Step_down_releases_at_once_and_a_follower_takes_over()
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        var a = await cluster.StartNodeAsync("a");
        var started = await cluster.Recorder.WaitStartedAsync("job", node: "a");
        var b = await cluster.StartNodeAsync("b");
        await b.WaitForLeaderAsync("job", "a");

        var mark = cluster.Recorder.Mark();
        await a.Singletons.StepDownAsync("job");
        var stopped = await cluster.Recorder.WaitStoppedAsync("job", "a", mark);
        var next = await cluster.Recorder.WaitStartedAsync("job", mark, node: "b");
        Assert.True(stopped.Seq < next.Seq);
        cluster.Recorder.AssertNoOverlap();

        // Stepping down is not a crash: no restart counted.
        Assert.Equal(0, a.Singletons.Get("job")!.Restarts);
        Assert.True(started.Seq < stopped.Seq);
    }

    [Fact]
    public async Task A_node_that_stepped_down_follows_during_its_hold_off_and_shows_who_took_over()
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        var a = await cluster.StartNodeAsync("a", configure: o => o.StepDownHoldOff = TimeSpan.FromMinutes(5));
        await cluster.Recorder.WaitStartedAsync("job", node: "a");
        var b = await cluster.StartNodeAsync("b");
        await b.WaitForLeaderAsync("job", "a");

        var mark = cluster.Recorder.Mark();
        await a.Singletons.StepDownAsync("job");
        await cluster.Recorder.WaitStartedAsync("job", mark, node: "b");

        // Within its five-minute hold-off, a follows b and says so (it used to show no leader until the hold-off ended).
        var status = await a.WaitForLeaderAsync("job", "b");

        // And it does not take the singleton back while held off: b stops, nobody else runs it, a does not start it.
        var stopMark = cluster.Recorder.Mark();
        await b.DisposeAsync();
        await cluster.Recorder.WaitStoppedAsync("job", "b", stopMark);
        await a.WaitForAsync("job", s => s.State == SingletonState.Following && s.Leader is null, "see the singleton free");
        Assert.DoesNotContain(cluster.Recorder.Events, e => e.Seq > stopMark && e.Kind == LifeKind.Started);
        Assert.Equal("b", status.Leader!.NodeId);
        cluster.Recorder.AssertNoOverlap();
    }

    [Fact]
    public async Task A_child_that_keeps_returning_by_itself_ends_in_a_crash_loop_whose_error_says_why()
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        var node = await cluster.StartNodeAsync("quick", singletons: [], configure: o =>
        {
            o.SingletonDefaults.MaxRestarts = 2;
            o.SingletonDefaults.RestartDelay = TimeSpan.Zero;
            o.SingletonDefaults.CrashLoopBehavior = CrashLoopBehavior.GiveUp;
        }, services: s => s.AddClusterSingleton("returns", (_, _, _) => Task.CompletedTask));

        var status = await node.WaitForStateAsync("returns", SingletonState.Faulted);

        Assert.Equal(2, status.Restarts);
        Assert.Contains("returned by itself more than 2 times", status.LastError, StringComparison.Ordinal);
        Assert.Contains("must return only when its stopping token fires", status.LastError, StringComparison.Ordinal);
        Assert.Contains(cluster.Logs.Entries, e => e.EventId.Id == HighlanderEventIds.CrashLoop && e.Message.Contains("needed more than 2 restarts", StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_failed_child_is_restarted_with_a_fresh_instance_and_the_failure_is_reported()
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        cluster.Behavior.FailuresLeft = 1;
        var node = await cluster.StartNodeAsync("solo");
        var failed = await cluster.Recorder.WaitStartedAsync("job");
        var again = await cluster.Recorder.WaitStartedAsync("job", failed.Seq + 1);
        await node.WaitForStateAsync("job", SingletonState.Leading);
        var status = node.Singletons.Get("job")!;
        Assert.Equal(1, status.Restarts);
        Assert.Contains("child failure injected by the test", status.LastError);
        Assert.True(again.Seq > failed.Seq);
        cluster.Recorder.AssertNoOverlap();
        Assert.Contains(cluster.Logs.Entries, e => e.EventId.Id == HighlanderEventIds.ChildFailed);
    }

    [Fact]
    public async Task A_crash_looping_child_escalates_by_stopping_its_host()
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        cluster.Behavior.FailuresLeft = int.MaxValue;
        var node = await cluster.StartNodeAsync("looper", configure: o =>
        {
            o.SingletonDefaults.MaxRestarts = 2;
            o.SingletonDefaults.RestartDelay = TimeSpan.Zero;
        });
        var lifetime = node.Host.Services.GetRequiredService<IHostApplicationLifetime>();
        var stopping = new TaskCompletionSource();
        lifetime.ApplicationStopping.Register(() => stopping.TrySetResult());
        await stopping.Task.WaitAsync(TimeSpan.FromSeconds(60));

        Assert.Equal(SingletonState.Faulted, node.Singletons.Get("job")!.State);
        Assert.Equal(3, cluster.Recorder.Events.Count(e => e.Kind == LifeKind.Started)); // the first run and two restarts
        Assert.Contains(cluster.Logs.Entries, e => e.EventId.Id == HighlanderEventIds.CrashLoop);
    }

    [Fact]
    public async Task Completed_child_under_OnFailure_keeps_the_lock_so_the_work_does_not_run_elsewhere()
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        cluster.Behavior.CompleteAtOnce = true;
        var a = await cluster.StartNodeAsync("a", configure: o => o.SingletonDefaults.RestartPolicy = RestartPolicy.OnFailure);
        await a.WaitForStateAsync("job", SingletonState.Completed);
        var b = await cluster.StartNodeAsync("b", configure: o => o.SingletonDefaults.RestartPolicy = RestartPolicy.OnFailure);
        var following = await b.WaitForLeaderAsync("job", "a");
        Assert.Equal(SingletonState.Completed, a.Singletons.Get("job")!.State);

        // Once a steps down, b runs it.
        var mark = cluster.Recorder.Mark();
        await a.Singletons.StepDownAsync("job");
        await cluster.Recorder.WaitStartedAsync("job", mark, node: "b");
        Assert.Single(cluster.Recorder.Events, e => e.Kind == LifeKind.Started && e.Node == "a");
    }

    [Fact]
    public async Task Leadership_token_and_state_changes_are_visible_to_the_child_and_watchers()
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        var lostSeen = new TaskCompletionSource<ILeadership>(TaskCreationOptions.RunContinuationsAsynchronously);
        var node = await cluster.StartNodeAsync("w", singletons: [], waitForStart: false, services: s => s.AddClusterSingleton("watched", async (leadership, _, ct) =>
        {
            await Task.Delay(Timeout.Infinite, leadership.LostToken).ContinueWith(_ => { }, TaskScheduler.Default);
            lostSeen.TrySetResult(leadership);
        }));

        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        var changes = new List<SingletonStateChanged>();
        var stream = node.Singletons.WatchAsync(cts.Token); // subscribes now, before the host starts
        var watching = Task.Run(async () =>
        {
            await foreach (var change in stream)
            {
                changes.Add(change);
                if (change.Current == SingletonState.Stopped)
                {
                    return;
                }
            }
        });

        await node.Host.StartAsync();
        await node.WaitForStateAsync("watched", SingletonState.Leading);
        var status = node.Singletons.GetAll().Single();
        Assert.Equal("watched", status.Name);
        Assert.Equal(SingletonKey.Derive(cluster.Namespace, "watched"), status.Key);
        Assert.Equal("w", status.Leader?.NodeId);

        await node.StopAsync();
        var leadership = await lostSeen.Task.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal("watched", leadership.Name);
        Assert.Equal("w", leadership.NodeId);
        await watching.WaitAsync(TimeSpan.FromSeconds(30));
        var states = changes.Select(c => c.Current).ToList();
        Assert.Equal([SingletonState.Starting, SingletonState.Leading, SingletonState.Stopping], states.SkipWhile(s => s != SingletonState.Starting).Take(3));
        Assert.Equal(SingletonState.Stopped, states[^1]);
    }
}
