using HighlanderPG.Diagnostics;
using HighlanderPG.Tests.Infrastructure;

namespace HighlanderPG.Tests.Hosting;

/// <summary>A real PgBouncer in front of the server: transaction mode is refused, session mode works when confirmed.</summary>
[Collection(SharedServer.Name)]
public sealed class PoolerTests(PostgresFixture pg)
{
    [Fact]
    public async Task A_transaction_mode_pooler_is_refused_and_no_child_runs()
    {
        await using var bouncer = await PgBouncer.StartAsync(pg.ConnectionString, "transaction");
        await using var cluster = new TestCluster(pg.ConnectionString);
        var node = await cluster.StartNodeAsync("pooled", connectionString: bouncer.ConnectionString);
        var refused = await cluster.Logs.WaitAsync(e => e.EventId.Id == HighlanderEventIds.Refused);
        Assert.Contains("pooler", refused.Message);
        var status = node.Singletons.Get("job")!;
        Assert.Equal(SingletonState.Disconnected, status.State);
        Assert.Contains("transaction-mode pooler", status.LastError);
        Assert.Empty(cluster.Recorder.Events);
    }

    [Fact]
    public async Task A_session_mode_pooler_works_once_confirmed()
    {
        await using var bouncer = await PgBouncer.StartAsync(pg.ConnectionString, "session");
        await using var cluster = new TestCluster(pg.ConnectionString);
        await cluster.StartNodeAsync("pooled", connectionString: bouncer.ConnectionString, configure: o => o.AllowSessionModePooler = true);
        await cluster.Recorder.WaitStartedAsync("job", node: "pooled");
        Assert.Contains(cluster.Logs.Entries, e => e.EventId.Id == HighlanderEventIds.SessionPooler);
    }
}
