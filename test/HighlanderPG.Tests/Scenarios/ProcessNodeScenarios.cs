using HighlanderPG.Diagnostics;
using HighlanderPG.TestKit.Scenarios;
using HighlanderPG.Tests.Infrastructure;

namespace HighlanderPG.Tests.Scenarios;

/// <summary>
/// The shared fault scenarios (<see cref="ProcessFaultScenarios{TNode}"/>) with nodes as separate OS processes (the test
/// node program, test/HighlanderPG.TestNode), whose children journal their own lives.
/// </summary>
[Collection(SharedServer.Name)]
public sealed class ProcessNodeScenarios(PostgresFixture pg) : ProcessFaultScenarios<ProcessScenarioNode>(pg.ConnectionString)
{
    private readonly JournalDirectory _life = new();
    private readonly string _namespace = "test-" + Guid.NewGuid().ToString("N")[..12];
    private readonly List<NodeProcess> _nodes = [];

    protected override LifeJournal Journal => _life.Journal;

    protected override string Singleton => NodeProcess.Singleton;

    protected override Task<ProcessScenarioNode> StartNodeAsync(string id, string connectionString, bool stubbornChild = false)
    {
        var process = NodeProcess.Start(_life.Journal, _namespace, id, connectionString, ignoreCancellation: stubbornChild);
        _nodes.Add(process);
        return Task.FromResult(new ProcessScenarioNode(process));
    }

    protected override async Task AfterKillAsync(ProcessScenarioNode leader, LifeEvent child) =>
        Assert.NotEqual(0, await leader.Process.Exited.WaitAsync(TimeSpan.FromSeconds(30)));

    /// <summary>
    /// By default (no escalation handler) the node ends its own process: its exit is the child's end. That the exit came
    /// before the follower's child started is witnessed by the kernel lock each test node's child holds while its process
    /// lives (the follower's start took it, with no overlap), not by when this test noticed the exit: under CPU load the
    /// test sees it a few hundred milliseconds late.
    /// </summary>
    protected override async Task AssertStubbornChildEndedFirstAsync(ProcessScenarioNode leader, LifeEvent child, int mark, LifeEvent next)
    {
        var exitCode = await leader.Process.Exited.WaitAsync(TimeSpan.FromSeconds(60));
        Assert.True(child.IsWitnessed() && next.IsWitnessed(), Journal.Describe());
        Assert.DoesNotContain(Journal.Events, e => e.Kind == LifeKind.Overlap);
        Journal.Poll();
        Assert.Single(Journal.Events, e => e.Kind == LifeKind.Killed && e.Node == leader.Id); // the process ended, the child never stopped
        Assert.NotEqual(0, exitCode);
        Assert.True(leader.Process.Logged(HighlanderEventIds.Escalating), leader.Process.Output); // logged (synchronously) before the process ended itself
    }

    public override async Task DisposeAsync()
    {
        foreach (var node in _nodes)
        {
            await node.DisposeAsync();
        }

        await base.DisposeAsync();
        _life.Dispose();
    }
}

/// <summary>A test node process as a scenario node.</summary>
public sealed class ProcessScenarioNode(NodeProcess process) : IProcessScenarioNode
{
    public NodeProcess Process { get; } = process;

    public string Id => Process.NodeId;

    public Task WaitFollowingAsync(string leader) => Process.WaitLoggedAsync(HighlanderEventIds.Following);

    public async Task StepDownAsync()
    {
        Process.Terminate();
        Assert.Equal(0, await Process.Exited.WaitAsync(TimeSpan.FromSeconds(15)));
    }

    public void Kill() => Process.Kill();

    public bool Logged(int eventId) => Process.Logged(eventId);

    public string Describe() => Process.Output;
}
