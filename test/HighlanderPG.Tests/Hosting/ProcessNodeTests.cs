using HighlanderPG.Diagnostics;
using HighlanderPG.Testing;
using HighlanderPG.Tests.Infrastructure;

namespace HighlanderPG.Tests.Hosting;

/// <summary>
/// Nodes as separate processes (test/HighlanderPG.TestNode): a starved node ends its own process. The scenarios every kind
/// of node shares (SIGKILL, SIGTERM, cut-off, a child that will not stop ending its process by default) are in
/// ProcessNodeScenarios.
/// </summary>
[Collection(SharedServer.Name)]
public sealed class ProcessNodeTests(PostgresFixture pg)
{
    [Fact]
    public async Task A_node_whose_thread_pool_is_starved_ends_its_process_before_the_lease_can_pass()
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        await using var proxy = FaultTests.ProxyTo(pg.ConnectionString);
        var trigger = Path.Combine(Path.GetTempPath(), $"highlander-starve-{Guid.NewGuid():N}");
        try
        {
            await using var leader = NodeProcess.Start(cluster, "starved", proxy.ConnectionString(pg.ConnectionString), starveThreadPoolWhenFileExists: trigger);
            await cluster.Recorder.WaitStartedAsync("ticker", node: "starved");
            var follower = await cluster.StartNodeAsync("in-test", singletons: ["ticker"]);
            await follower.WaitForLeaderAsync("ticker", "starved");

            // Blackholed, the server frees the lock only when the lease runs out, not when the process dies: so the
            // follower's start after the exit shows that the process ended before the lease could pass. Starved, no timer,
            // no task continuation and no heartbeat runs in that process: only the lease guard's own thread can end it.
            var mark = cluster.Recorder.Mark();
            proxy.SetMode(ProxyMode.Blackhole);
            await File.WriteAllTextAsync(trigger, "");
            var next = await cluster.Recorder.WaitStartedAsync("ticker", mark, node: "in-test");
            Assert.True(leader.Exited.IsCompleted, $"the starved node still ran when the follower started its child:\n{cluster.Recorder.Describe()}\n{leader.Output}");
            var exited = cluster.Recorder.Events.Single(e => e.Kind == LifeKind.Killed && e.Node == "starved");
            Assert.True(exited.Seq < next.Seq, cluster.Recorder.Describe());
            Assert.NotEqual(0, await leader.Exited);
            Assert.Contains("STARVING", leader.Output);
            Assert.Contains($"[{HighlanderEventIds.Escalating}]", leader.Output); // logged (synchronously) before the process ended itself
            Assert.DoesNotContain(cluster.Recorder.Events, e => e.Kind == LifeKind.Stopped && e.Node == "starved");
            cluster.Recorder.AssertNoOverlap();
        }
        finally
        {
            File.Delete(trigger);
        }
    }
}
