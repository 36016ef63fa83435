using HighlanderPG.Diagnostics;
using HighlanderPG.Testing;
using HighlanderPG.Tests.Infrastructure;
using Npgsql;

namespace HighlanderPG.Tests.Hosting;

/// <summary>Faults of the server itself; each test has a throwaway server of its own.</summary>
public sealed class ServerFaultTests
{
    [Fact]
    public async Task After_a_server_restart_no_child_starts_before_the_lock_delay()
    {
        await using var server = await LocalPostgresServer.StartAsync();
        await using var cluster = new TestCluster(server.ConnectionString);
        var a = await cluster.StartNodeAsync("a", configure: o => o.LockDelayAfterServerStart = TimeSpan.Zero.Add(TimeSpan.FromSeconds(3)));
        var first = await cluster.Recorder.WaitStartedAsync("job");
        var b = await cluster.StartNodeAsync("b");

        var mark = cluster.Recorder.Mark();
        await server.RestartAsync(ShutdownMode.Fast);
        var stopped = await cluster.Recorder.WaitStoppedAsync("job", first.Node, mark);
        var next = await cluster.Recorder.WaitStartedAsync("job", mark);
        var uptime = await Db.ScalarAsync<double>(server.ConnectionString, "SELECT extract(epoch from now() - pg_postmaster_start_time())::float8");

        Assert.True(stopped.Seq < next.Seq, cluster.Recorder.Describe());
        Assert.True(uptime >= 3.0, $"a child started only {uptime:F2}s after the server started, inside the 3s lock-delay");
        Assert.Contains(cluster.Logs.Entries, e => e.EventId.Id == HighlanderEventIds.LockDelay);
        cluster.Recorder.AssertNoOverlap();
    }

    [Fact]
    public async Task With_no_database_at_start_the_host_starts_no_child_runs_and_it_keeps_trying()
    {
        await using var server = await LocalPostgresServer.StartAsync();
        await server.StopAsync(ShutdownMode.Fast);
        await using var cluster = new TestCluster(server.ConnectionString);
        var cs = new NpgsqlConnectionStringBuilder(server.ConnectionString) { Password = "Sup3r-S3cret-Value" }.ConnectionString;
        var node = await cluster.StartNodeAsync("early", connectionString: cs);

        // The host started; the node warns, stays disconnected and runs nothing.
        await cluster.Logs.WaitAsync(e => e.EventId.Id == HighlanderEventIds.ConnectFailed && e.Level == Microsoft.Extensions.Logging.LogLevel.Warning);
        await cluster.Logs.WaitAsync(e => e.EventId.Id == HighlanderEventIds.ConnectFailed && e != cluster.Logs.Entries.First(x => x.EventId.Id == HighlanderEventIds.ConnectFailed)); // it retries
        Assert.Equal(SingletonState.Disconnected, node.Singletons.Get("job")!.State);
        Assert.Empty(cluster.Recorder.Events);

        await server.StartAsync();
        await cluster.Recorder.WaitStartedAsync("job", node: "early");
        Assert.DoesNotContain(cluster.Logs.Entries, e => e.Message.Contains("Sup3r-S3cret-Value") || (e.Exception?.ToString().Contains("Sup3r-S3cret-Value") ?? false));
    }

    [Fact]
    public async Task A_standby_is_refused_and_no_child_runs_on_it()
    {
        await using var server = await LocalPostgresServer.StartAsync();
        await server.StopAsync(ShutdownMode.Fast);
        await server.MarkAsStandbyAsync();
        await server.StartAsync();
        Assert.True(await Db.ScalarAsync<bool>(server.ConnectionString, "SELECT pg_is_in_recovery()"));

        await using var cluster = new TestCluster(server.ConnectionString);
        var node = await cluster.StartNodeAsync("on-standby");
        var refused = await cluster.Logs.WaitAsync(e => e.EventId.Id == HighlanderEventIds.Refused);
        Assert.Contains("standby", refused.Message);
        var status = node.Singletons.Get("job")!;
        Assert.Equal(SingletonState.Disconnected, status.State);
        Assert.Contains("standby", status.LastError);
        Assert.Empty(cluster.Recorder.Events);
    }
}
