using HighlanderPG.TestKit.Scenarios;
using HighlanderPG.Tests.Infrastructure;

namespace HighlanderPG.Tests.Scenarios;

/// <summary>The shared fault scenarios (<see cref="FaultScenarios{TNode}"/>) with in-process nodes (<see cref="TestCluster"/>).</summary>
[Collection(SharedServer.Name)]
public sealed class InProcessNodeScenarios(PostgresFixture pg) : FaultScenarios<InProcessScenarioNode>(pg.ConnectionString)
{
    private readonly TestCluster _cluster = new(pg.ConnectionString);

    protected override LifeJournal Journal => _cluster.Recorder;

    protected override string Singleton => "job";

    protected override async Task<InProcessScenarioNode> StartNodeAsync(string id, string connectionString) =>
        new(await _cluster.StartNodeAsync(id, connectionString: connectionString), _cluster.Logs);

    protected override Task AfterCutOffAsync(InProcessScenarioNode leader)
    {
        Assert.NotEqual(SingletonState.Leading, leader.Node.Singletons.Get("job")!.State);
        Assert.Equal(0, leader.Node.Singletons.Get("job")!.Restarts); // losing the lease is not a crash
        return Task.CompletedTask;
    }

    public override async Task DisposeAsync()
    {
        await _cluster.DisposeAsync();
        await base.DisposeAsync();
    }
}

/// <summary>An in-process node (its own host and sessions) as a scenario node.</summary>
public sealed class InProcessScenarioNode(TestNode node, LogCapture logs) : IScenarioNode
{
    public TestNode Node { get; } = node;

    public string Id => Node.NodeId;

    public Task WaitFollowingAsync(string leader) => Node.WaitForLeaderAsync("job", leader);

    /// <summary>The host's graceful shutdown (what SIGTERM does to a process).</summary>
    public Task StepDownAsync() => Node.StopAsync();

    public bool Logged(int eventId) => logs.Entries.Any(e => e.Node == Id && e.EventId.Id == eventId);

    public string Describe() => string.Join("\n", logs.Entries.Where(e => e.Node == Id).Select(e => $"  {e.At:HH:mm:ss.fff} {e.EventId.Id} {e.Level} {e.Message}"));
}
