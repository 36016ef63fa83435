using HighlanderPG.Diagnostics;
using HighlanderPG.Groups;
using HighlanderPG.Hosting;
using HighlanderPG.Testing;
using HighlanderPG.Tests.Infrastructure;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;

namespace HighlanderPG.Tests.Groups;

/// <summary>Singleton groups against a real PostgreSQL: order, strategies, restart types, intensity, hand-over, introspection.</summary>
[Collection(SharedServer.Name)]
public sealed class SingletonGroupTests(PostgresFixture pg) : IAsyncLifetime
{
    private const string Group = "billing";
    private readonly TestCluster _cluster = new(pg.ConnectionString);
    private readonly GroupLab _lab = new();

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync() => await _cluster.DisposeAsync();

    private Task<TestNode> StartNodeAsync(
        string id,
        Action<SingletonGroupBuilder>? build = null,
        Action<ClusterSingletonOptions>? configure = null,
        Action<HighlanderOptions>? options = null,
        string? connectionString = null) =>
        _cluster.StartNodeAsync(
            id,
            singletons: [],
            connectionString: connectionString,
            configure: o =>
            {
                o.Fencing = true;
                options?.Invoke(o);
            },
            services: s =>
            {
                s.AddSingleton(_lab);
                s.AddClusterSingletonGroup(Group, build ?? (g => g.Add<Probe<A>>("a").Add<Probe<B>>("b").Add<Probe<C>>("c")), configure);
            });

    private static string Describe(IEnumerable<GroupEntry> entries) => string.Join(" ", entries.Select(e => $"{e.Kind}:{e.Member}"));

    /// <summary>Waits until the group's status on <paramref name="node"/> matches, woken by member changes.</summary>
    private static async Task<SingletonGroupStatus> WaitForGroupAsync(TestNode node, Func<SingletonGroupStatus, bool> match, string what)
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        var watch = node.Singletons.WatchMembersAsync(cts.Token).GetAsyncEnumerator(cts.Token);
        try
        {
            if (node.Singletons.GetGroup(Group) is { } now && match(now))
            {
                return now;
            }

            while (await watch.MoveNextAsync())
            {
                if (node.Singletons.GetGroup(Group) is { } status && match(status))
                {
                    return status;
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
        finally
        {
            await watch.DisposeAsync();
        }

        throw new TimeoutException($"{Group} on {node.NodeId} did not {what}; it is {node.Singletons.GetGroup(Group)}: {string.Join("; ", node.Singletons.GetGroup(Group)!.Members)}");
    }

    private static Task<SingletonGroupStatus> WaitAllRunningAsync(TestNode node) =>
        WaitForGroupAsync(node, g => g.Members.All(m => m.State == GroupMemberState.Running), "run every member");

    [Fact]
    public async Task Members_start_in_declared_order_share_the_group_epoch_and_stop_in_reverse_order()
    {
        var node = await StartNodeAsync("n1");
        var leading = await node.WaitForStateAsync(Group, SingletonState.Leading);
        var started = _lab.Since(0);

        // Leading is reported once every member has started, in declared order, each under the group's one epoch.
        Assert.Equal("start:a start:b start:c", Describe(started));
        Assert.NotNull(leading.FencingEpoch);
        Assert.All(started, e => Assert.Equal(leading.FencingEpoch, e.Epoch));

        var mark = _lab.Count;
        await node.StopAsync();
        Assert.Equal("stop:c stop:b stop:a", Describe(_lab.Since(mark)));
        Assert.All(node.Singletons.GetGroup(Group)!.Members, m => Assert.Equal(GroupMemberState.Stopped, m.State));
    }

    [Fact]
    public async Task One_for_one_restarts_only_the_failed_member_and_keeps_the_lock()
    {
        var leader = await StartNodeAsync("n1");
        var before = await leader.WaitForStateAsync(Group, SingletonState.Leading);
        var follower = await StartNodeAsync("n2");
        await follower.WaitForLeaderAsync(Group, "n1");
        await WaitAllRunningAsync(leader);

        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        var events = new List<GroupMemberChanged>();
        var watch = leader.Singletons.WatchMembersAsync(cts.Token).GetAsyncEnumerator(cts.Token);
        var mark = _lab.Count;
        _lab.Fail("b");
        var restarted = await _lab.WaitForAsync("start", 1, mark);
        var status = await WaitForGroupAsync(leader, g => g.Members[1].State == GroupMemberState.Running && g.Members[1].Restarts == 1, "restart b");

        Assert.Equal("stop:b start:b", Describe(restarted));
        Assert.All(restarted, e => Assert.Equal(("n1", before.FencingEpoch), (e.Node, e.Epoch)));

        // No hand-over: the singleton never left Leading on n1 (same state since, same epoch, no restart of its own), and
        // the other node still follows n1.
        var after = leader.Singletons.Get(Group)!;
        Assert.Equal((SingletonState.Leading, before.Since, before.FencingEpoch, 0), (after.State, after.Since, after.FencingEpoch, after.Restarts));
        Assert.Equal("n1", follower.Singletons.Get(Group)!.Leader?.NodeId);
        Assert.DoesNotContain(_lab.Since(0), e => e.Node == "n2");

        Assert.Equal(1, status.Restarts);
        Assert.Equal([0, 1, 0], status.Members.Select(m => m.Restarts));
        Assert.Contains("member b failure injected", status.Members[1].LastError);
        Assert.Null(status.Members[0].LastError);

        // The member events name the member: b failed (with its error), then started again.
        while (await watch.MoveNextAsync())
        {
            events.Add(watch.Current);
            if (watch.Current is { Member: "b", Current: GroupMemberState.Running })
            {
                break;
            }
        }

        await watch.DisposeAsync();
        Assert.All(events, e => Assert.Equal((Group, "b", "n1"), (e.Group, e.Member, e.NodeId)));
        Assert.Equal(
            [GroupMemberState.Stopped, GroupMemberState.Starting, GroupMemberState.Running],
            events.Select(e => e.Current));
        Assert.Contains("member b failure injected", events[0].Error);
        Assert.All(events, e => Assert.Equal(before.FencingEpoch, e.FencingEpoch));
    }

    [Fact]
    public async Task One_for_all_stops_the_others_in_reverse_order_then_starts_all_in_declared_order()
    {
        var node = await StartNodeAsync("n1", g => g.Add<Probe<A>>("a").Add<Probe<B>>("b").Add<Probe<C>>("c").Strategy(GroupStrategy.OneForAll));
        var before = await node.WaitForStateAsync(Group, SingletonState.Leading);
        await WaitAllRunningAsync(node);

        var mark = _lab.Count;
        _lab.Fail("b");
        var entries = await _lab.WaitForAsync("start", 3, mark);
        Assert.Equal("stop:b stop:c stop:a start:a start:b start:c", Describe(entries));
        Assert.All(entries, e => Assert.Equal(before.FencingEpoch, e.Epoch));

        var status = await WaitAllRunningAsync(node);
        Assert.Equal([1, 1, 1], status.Members.Select(m => m.Restarts));
        Assert.Equal(1, status.Restarts);
        Assert.Equal((SingletonState.Leading, before.Since, 0), (node.Singletons.Get(Group)!.State, node.Singletons.Get(Group)!.Since, node.Singletons.Get(Group)!.Restarts));
    }

    [Fact]
    public async Task A_plain_hosted_service_member_is_stopped_and_started_again_by_a_sibling_restart()
    {
        var node = await StartNodeAsync("n1", g => g.Add<PlainMember>("plain").Add<Probe<B>>("b").Strategy(GroupStrategy.OneForAll));
        await node.WaitForStateAsync(Group, SingletonState.Leading);
        await WaitAllRunningAsync(node);

        var mark = _lab.Count;
        _lab.Fail("b");
        Assert.Equal("stop:b stop:plain start:plain start:b", Describe(await _lab.WaitForAsync("start", 2, mark)));
        Assert.Equal([1, 1], (await WaitAllRunningAsync(node)).Members.Select(m => m.Restarts));

        mark = _lab.Count;
        await node.StopAsync();
        Assert.Equal("stop:b stop:plain", Describe(_lab.Since(mark)));
    }

    [Fact]
    public async Task Rest_for_one_restarts_the_failed_member_and_those_declared_after_it()
    {
        var node = await StartNodeAsync("n1", g => g.Add<Probe<A>>("a").Add<Probe<B>>("b").Add<Probe<C>>("c").Strategy(GroupStrategy.RestForOne));
        var before = await node.WaitForStateAsync(Group, SingletonState.Leading);
        await WaitAllRunningAsync(node);

        var mark = _lab.Count;
        _lab.Fail("b");
        var entries = await _lab.WaitForAsync("start", 2, mark);
        Assert.Equal("stop:b stop:c start:b start:c", Describe(entries));
        var status = await WaitAllRunningAsync(node);
        Assert.Equal([0, 1, 1], status.Members.Select(m => m.Restarts));
        Assert.Equal((SingletonState.Leading, before.Since, before.FencingEpoch), (node.Singletons.Get(Group)!.State, node.Singletons.Get(Group)!.Since, node.Singletons.Get(Group)!.FencingEpoch));

        // The first member was never touched.
        Assert.DoesNotContain(_lab.Since(mark), e => e.Member == "a");
    }

    [Fact]
    public async Task A_failed_start_counts_as_a_failure_and_the_member_is_restarted()
    {
        _lab.FailStarts("b", 1);
        var node = await StartNodeAsync("n1");
        await node.WaitForStateAsync(Group, SingletonState.Leading);
        var status = await WaitAllRunningAsync(node);

        // b's first start failed; one-for-one restarted it, then the start pass went on to c.
        Assert.Equal("start:a start:b start:b start:c", Describe(_lab.Since(0).Where(e => e.Kind == "start")));
        Assert.Equal([0, 1, 0], status.Members.Select(m => m.Restarts));
        Assert.Contains("start failure injected", status.Members[1].LastError);
        Assert.Equal(0, node.Singletons.Get(Group)!.Restarts);
    }

    [Fact]
    public async Task Transient_members_restart_only_after_a_failure_and_temporary_members_never()
    {
        var node = await StartNodeAsync("n1", g => g
            .Add<Probe<A>>("a", MemberRestart.Transient)
            .Add<Probe<B>>("b", MemberRestart.Transient)
            .Add<Probe<C>>("c", MemberRestart.Temporary));
        await node.WaitForStateAsync(Group, SingletonState.Leading);
        await WaitAllRunningAsync(node);

        // Transient, failed: restarted.
        var mark = _lab.Count;
        _lab.Fail("a");
        Assert.Equal("stop:a start:a", Describe(await _lab.WaitForAsync("start", 1, mark)));
        await WaitForGroupAsync(node, g => g.Members[0] is { State: GroupMemberState.Running, Restarts: 1 }, "restart a");

        // Transient, completed normally: left ended.
        _lab.Complete("b");
        var status = await WaitForGroupAsync(node, g => g.Members[1].State == GroupMemberState.Completed, "complete b");
        Assert.Equal(0, status.Members[1].Restarts);

        // Temporary, failed: left failed, never restarted.
        _lab.Fail("c");
        status = await WaitForGroupAsync(node, g => g.Members[2].State == GroupMemberState.Failed, "fail c");
        Assert.Equal(0, status.Members[2].Restarts);
        Assert.Contains("member c failure injected", status.Members[2].LastError);
        Assert.Equal((1, 1, 1), (status.Running, status.Active, status.Restarts));

        // The remaining member keeps the group (and the lock) alive.
        Assert.Equal(SingletonState.Leading, node.Singletons.Get(Group)!.State);
        Assert.Equal(2, _lab.Since(0).Count(e => e.Kind == "start" && e.Member == "a"));
        Assert.Single(_lab.Since(0), e => e.Kind == "start" && e.Member == "b");
        Assert.Single(_lab.Since(0), e => e.Kind == "start" && e.Member == "c");
    }

    [Fact]
    public async Task A_group_whose_members_all_ended_completes_and_the_singleton_restart_policy_decides()
    {
        var node = await StartNodeAsync(
            "n1",
            g => g.Add<Probe<A>>("a", MemberRestart.Transient).Add<Probe<B>>("b", MemberRestart.Temporary),
            s => s.RestartPolicy = RestartPolicy.OnFailure);
        var leading = await node.WaitForStateAsync(Group, SingletonState.Leading);
        await WaitAllRunningAsync(node);

        _lab.Complete("a");
        await WaitForGroupAsync(node, g => g.Members[0].State == GroupMemberState.Completed, "complete a");
        _lab.Complete("b");

        // Nothing runs and nothing is to be restarted: the group's child completed normally, and OnFailure keeps the lock
        // without running it again.
        var completed = await node.WaitForStateAsync(Group, SingletonState.Completed);
        Assert.Equal((leading.FencingEpoch, 0), (completed.FencingEpoch, completed.Restarts));
        Assert.Equal(0, node.Singletons.GetGroup(Group)!.Active);
        Assert.Contains(_cluster.Logs.Entries, e => e.EventId.Id == HighlanderEventIds.GroupCompleted);
        Assert.Equal(2, _lab.Since(0).Count(e => e.Kind == "start"));
    }

    [Fact]
    public async Task A_temporary_member_stopped_by_a_one_for_all_restart_is_not_started_again()
    {
        var node = await StartNodeAsync("n1", g => g
            .Add<Probe<A>>("a")
            .Add<Probe<B>>("b", MemberRestart.Temporary)
            .Add<Probe<C>>("c")
            .Strategy(GroupStrategy.OneForAll));
        await node.WaitForStateAsync(Group, SingletonState.Leading);
        await WaitAllRunningAsync(node);

        var mark = _lab.Count;
        _lab.Fail("c");
        var entries = await _lab.WaitForAsync("start", 2, mark);
        Assert.Equal("stop:c stop:b stop:a start:a start:c", Describe(entries));
        var status = await WaitForGroupAsync(node, g => g.Members[0].State == GroupMemberState.Running && g.Members[2].State == GroupMemberState.Running, "restart a and c");
        Assert.Equal(GroupMemberState.Completed, status.Members[1].State);
        Assert.Equal([1, 0, 1], status.Members.Select(m => m.Restarts));
    }

    [Fact]
    public async Task Past_its_intensity_the_group_fails_as_a_whole_and_the_singleton_restart_policy_applies()
    {
        var node = await StartNodeAsync("n1", g => g.Add<Probe<A>>("a").Add<Probe<B>>("b").Add<Probe<C>>("c").Intensity(1, TimeSpan.FromMinutes(5)));
        var first = await node.WaitForStateAsync(Group, SingletonState.Leading);
        await WaitAllRunningAsync(node);

        var mark = _lab.Count;
        _lab.Fail("b");
        await _lab.WaitForAsync("start", 1, mark);
        await WaitForGroupAsync(node, g => g.Members[1] is { State: GroupMemberState.Running, Restarts: 1 }, "restart b");

        // The second restart within the window exceeds the intensity: every member is stopped (reverse order), the group's
        // child fails, and the singleton's own policy (Always, after RestartDelay) runs the group again under a new epoch.
        mark = _lab.Count;
        _lab.Fail("b");
        var entries = await _lab.WaitForAsync("start", 3, mark);
        Assert.Equal("stop:b stop:c stop:a start:a start:b start:c", Describe(entries));
        Assert.All(entries.Take(3), e => Assert.Equal(first.FencingEpoch, e.Epoch));
        Assert.All(entries.Skip(3), e => Assert.True(e.Epoch > first.FencingEpoch, $"restarted under epoch {e.Epoch}, not after {first.FencingEpoch}"));

        var singleton = await node.WaitForAsync(Group, s => s.State == SingletonState.Leading && s.Restarts == 1, "lead again after one restart");
        Assert.Contains("restarted more than 1 time(s)", singleton.LastError);
        Assert.Contains("member 'b' failed", singleton.LastError);
        Assert.Contains(_cluster.Logs.Entries, e => e.EventId.Id == HighlanderEventIds.GroupIntensityExceeded);
    }

    [Fact]
    public async Task A_group_past_its_intensity_falls_under_the_singleton_crash_loop_handling()
    {
        var node = await StartNodeAsync(
            "n1",
            g => g.Add<Probe<A>>("a").Add<Probe<B>>("b").Intensity(0, TimeSpan.FromMinutes(5)),
            s =>
            {
                s.MaxRestarts = 0;
                s.CrashLoopBehavior = CrashLoopBehavior.GiveUp;
            });
        await node.WaitForStateAsync(Group, SingletonState.Leading);
        await WaitAllRunningAsync(node);

        var mark = _lab.Count;
        _lab.Fail("a");
        await node.WaitForStateAsync(Group, SingletonState.Faulted);
        Assert.Equal("stop:a stop:b", Describe(_lab.Since(mark)));
        var status = node.Singletons.GetGroup(Group)!;
        Assert.Equal(0, status.Active);
        Assert.All(status.Members, m => Assert.Equal(GroupMemberState.Stopped, m.State));
    }

    [Fact]
    public async Task A_hand_over_stops_every_member_on_the_old_node_before_any_starts_on_the_new_one()
    {
        var old = await StartNodeAsync("n1");
        var first = await old.WaitForStateAsync(Group, SingletonState.Leading);
        var next = await StartNodeAsync("n2");
        await next.WaitForLeaderAsync(Group, "n1");

        var mark = _lab.Count;
        await old.StopAsync();
        var second = await next.WaitForStateAsync(Group, SingletonState.Leading);
        var entries = _lab.Since(mark);
        Assert.Equal("stop:c stop:b stop:a start:a start:b start:c", Describe(entries));
        Assert.Equal(["n1", "n1", "n1", "n2", "n2", "n2"], entries.Select(e => e.Node));
        Assert.True(second.FencingEpoch > first.FencingEpoch);
        Assert.All(entries.Skip(3), e => Assert.Equal(second.FencingEpoch, e.Epoch));
    }

    [Fact]
    public async Task A_cut_off_leader_stops_every_member_before_its_lease_ends_and_another_node_starts_any()
    {
        var target = new Npgsql.NpgsqlConnectionStringBuilder(pg.ConnectionString);
        await using var proxy = FaultProxy.Start(target.Host!, target.Port);
        var old = await StartNodeAsync("n1", connectionString: proxy.ConnectionString(pg.ConnectionString));
        var first = await old.WaitForStateAsync(Group, SingletonState.Leading);
        var next = await StartNodeAsync("n2");
        await next.WaitForLeaderAsync(Group, "n1");

        // n1 can no longer reach the server: at its lease deadline it stops its members (reverse order), and the server
        // frees the lock only when the lease has run out, so n2 starts none of them before all of n1's have stopped.
        var mark = _lab.Count;
        proxy.SetMode(ProxyMode.Blackhole);
        var second = await next.WaitForStateAsync(Group, SingletonState.Leading);
        var entries = _lab.Since(mark);
        Assert.Equal("n1:stop:c n1:stop:b n1:stop:a n2:start:a n2:start:b n2:start:c", string.Join(" ", entries.Select(e => $"{e.Node}:{e.Kind}:{e.Member}")));
        Assert.True(second.FencingEpoch > first.FencingEpoch);
        Assert.Equal(0, old.Singletons.Get(Group)!.Restarts); // losing the lease is no failure of the group
        Assert.All(old.Singletons.GetGroup(Group)!.Members, m => Assert.Equal((GroupMemberState.Stopped, 0), (m.State, m.Restarts)));
    }

    [Fact]
    public async Task A_member_that_does_not_stop_keeps_the_group_running_until_the_singleton_escalates()
    {
        var escalations = new List<EscalationContext>();
        _lab.Stubborn.Add("b");
        var node = await StartNodeAsync("n1", options: o => o.OnEscalation = ctx =>
        {
            lock (escalations)
            {
                escalations.Add(ctx);
            }

            _lab.Record(ctx.NodeId, "*", "escalated", null);
            _lab.Release(); // what ending the process would do to the member
            return ValueTask.CompletedTask;
        });
        await node.WaitForStateAsync(Group, SingletonState.Leading);
        await WaitAllRunningAsync(node);

        var mark = _lab.Count;
        await node.StopAsync();

        // c stopped; b ignored its stop, so the group (the singleton's child) was still running when the stop time was up:
        // the runner escalated, and only then did b (and after it a) stop.
        Assert.Equal("stop:c escalated:* stop:b stop:a", Describe(_lab.Since(mark)));
        var escalation = Assert.Single(escalations);
        Assert.Equal(Group, escalation.Singleton);
        Assert.Contains("did not stop", escalation.Reason);
    }

    [Fact]
    public async Task A_sibling_that_does_not_stop_for_a_restart_makes_the_group_step_down_and_escalate()
    {
        var escalations = new List<EscalationContext>();
        _lab.Stubborn.Add("c");
        var node = await StartNodeAsync("n1", g => g.Add<Probe<A>>("a").Add<Probe<B>>("b").Add<Probe<C>>("c").Strategy(GroupStrategy.OneForAll), options: o => o.OnEscalation = ctx =>
        {
            lock (escalations)
            {
                escalations.Add(ctx);
            }

            _lab.Record(ctx.NodeId, "*", "escalated", null);
            _lab.Release();
            return ValueTask.CompletedTask;
        });
        await node.WaitForStateAsync(Group, SingletonState.Leading);
        await WaitAllRunningAsync(node);

        // b fails; one-for-all stops c first, which ignores it past the stop timeout: the group steps down, the runner's
        // stop time runs out too, and it escalates; only then does c stop, and a after it. Nothing was started meanwhile.
        var mark = _lab.Count;
        _lab.Fail("b");
        var entries = await _lab.WaitAsync(e => e.Any(x => x.Kind == "stop" && x.Member == "a"), mark, "a's stop");
        Assert.Equal("stop:b escalated:* stop:c stop:a", Describe(entries));
        Assert.Contains("did not stop", Assert.Single(escalations).Reason);
        Assert.Contains(_cluster.Logs.Entries, e => e.EventId.Id == HighlanderEventIds.GroupMemberStopTimeout);
    }

    [Fact]
    public async Task Introspection_lists_members_with_counts_on_the_leader_and_the_follower_and_in_the_health_check()
    {
        var leader = await StartNodeAsync("n1", g => g.Add<Probe<A>>("a").Add("mailer", async (lead, _, ct) =>
        {
            _lab.Record(lead.NodeId, "mailer", "run", lead.FencingEpoch);
            await Task.Delay(Timeout.Infinite, ct).ContinueWith(_ => { }, TaskScheduler.Default);
        }, MemberRestart.Transient).Strategy(GroupStrategy.RestForOne).Intensity(7, TimeSpan.FromSeconds(30)));
        await leader.WaitForStateAsync(Group, SingletonState.Leading);
        var follower = await StartNodeAsync("n2", g => g.Add<Probe<A>>("a").Add("mailer", (_, _, _) => Task.CompletedTask, MemberRestart.Transient).Strategy(GroupStrategy.RestForOne).Intensity(7, TimeSpan.FromSeconds(30)));
        await follower.WaitForLeaderAsync(Group, "n1");

        var led = await WaitAllRunningAsync(leader);
        Assert.Equal((Group, GroupStrategy.RestForOne, 7, TimeSpan.FromSeconds(30)), (led.Name, led.Strategy, led.MaxRestarts, led.RestartWindow));
        Assert.Equal(["a", "mailer"], led.Members.Select(m => m.Name));
        Assert.Equal([MemberRestart.Permanent, MemberRestart.Transient], led.Members.Select(m => m.Restart));
        Assert.Equal(typeof(Probe<A>), led.Members[0].ServiceType);
        Assert.Equal((2, 2, 2, 0), (led.Specs, led.Active, led.Running, led.Restarts));
        Assert.Equal(SingletonState.Leading, led.Singleton!.State);
        Assert.NotNull(led.Singleton.FencingEpoch);

        var followed = follower.Singletons.GetGroup(Group)!;
        Assert.Equal((2, 0, 0), (followed.Specs, followed.Active, followed.Running));
        Assert.All(followed.Members, m => Assert.Equal(GroupMemberState.Stopped, m.State));
        Assert.Equal((SingletonState.Following, "n1"), (followed.Singleton!.State, followed.Singleton.Leader?.NodeId));

        Assert.Single(leader.Singletons.GetGroups());
        Assert.Null(leader.Singletons.GetGroup("no-such-group"));

        var check = new HighlanderHealthCheck(leader.Host.Services.GetRequiredService<HighlanderNode>());
        var health = await check.CheckHealthAsync(new HealthCheckContext { Registration = new HealthCheckRegistration("h", check, HealthStatus.Degraded, null) });
        Assert.Equal(HealthStatus.Healthy, health.Status);
        Assert.StartsWith("Leading", (string)health.Data[Group]);
        Assert.Equal("Running, restarts 0", health.Data[$"{Group}/a"]);
        Assert.Equal("Running, restarts 0", health.Data[$"{Group}/mailer"]);
    }
}
