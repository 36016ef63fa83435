using HighlanderPG.Diagnostics;
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

    private readonly List<EscalationContext> _escalations = [];

    protected override async Task<InProcessScenarioNode> StartNodeAsync(string id, string connectionString, bool stubbornChild = false)
    {
        if (!stubbornChild)
        {
            return new(await _cluster.StartNodeAsync(id, connectionString: connectionString), _cluster.Logs);
        }

        // Every child of the cluster ignores cancellation from now on (the follower's too), until the escalation ends them.
        _cluster.Behavior.IgnoreCancellation = true;
        return new(await _cluster.StartNodeAsync(id, connectionString: connectionString, configure: o => o.OnEscalation = ctx =>
        {
            lock (_escalations)
            {
                _escalations.Add(ctx);
            }

            // What the default (ending the process) does to the child, done to this in-process child only.
            _cluster.Recorder.Record(ctx.NodeId, ctx.Singleton, LifeKind.Escalated, ctx.Reason);
            _cluster.Behavior.Kill();
            return ValueTask.CompletedTask;
        }), _cluster.Logs);
    }

    protected override async Task AssertStubbornChildEndedFirstAsync(InProcessScenarioNode leader, LifeEvent child, int mark, LifeEvent next)
    {
        var escalated = await Journal.WaitAsync(e => e.Kind == LifeKind.Escalated, mark);
        Assert.True(escalated.Seq < next.Seq, Journal.Describe());

        EscalationContext context;
        lock (_escalations)
        {
            context = Assert.Single(_escalations);
        }

        Assert.Equal("job", context.Singleton);
        Assert.Contains("did not stop", context.Reason);

        // Escalated when the child's stop time ran out (at the client deadline, or its whole StopTimeout after it was told to
        // stop, whichever first), never before it was told: what is left is at most the margin plus that stop time.
        // That it came before the server could free the lock is shown by the order above, not by a clock reading.
        var timings = new HighlanderOptions();
        TestCluster.TestTimings(timings);
        Assert.NotNull(context.RemainingLease);
        Assert.True(context.RemainingLease <= timings.SafetyMargin + timings.StopTimeout, $"escalated {context.RemainingLease} before the server could free the lock: before the child had its stop time");
        Assert.Contains(_cluster.Logs.Entries, e => e.EventId.Id == HighlanderEventIds.Escalating && e.Level == Microsoft.Extensions.Logging.LogLevel.Critical);
    }

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
