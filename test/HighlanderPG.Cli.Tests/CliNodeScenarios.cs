using HighlanderPG.Cli.Processes;
using HighlanderPG.Cli.Tests.Infrastructure;
using HighlanderPG.Diagnostics;
using HighlanderPG.TestKit.Scenarios;

namespace HighlanderPG.Cli.Tests;

/// <summary>
/// The shared fault scenarios (<see cref="ProcessFaultScenarios{TNode}"/>) with CLI nodes: each node is a real
/// <c>highlander run</c> process whose command is the journal's child script (a shell that proves with a kernel lock that
/// no two run at once, and starts a grandchild).
/// </summary>
[Collection(CliServer.Name)]
public sealed class CliNodeScenarios(PostgresFixture pg) : ProcessFaultScenarios<CliScenarioNode>(pg.ConnectionString)
{
    private readonly JournalDirectory _life = new();
    private readonly string _name = "job-" + Guid.NewGuid().ToString("N")[..8];
    private readonly List<CliProcess> _nodes = [];

    protected override LifeJournal Journal => _life.Journal;

    protected override string Singleton => _name;

    protected override Task<CliScenarioNode> StartNodeAsync(string id, string connectionString, bool stubbornChild = false)
    {
        var cli = CliProcess.Start(["run", "--name", _name, "--node-id", id, .. RunTests.Timings, "--", .. _life.ScriptCommand], JournalEnvironment.For(_life, connectionString, stubbornChild));
        _nodes.Add(cli);
        return Task.FromResult(new CliScenarioNode(id, cli));
    }

    /// <summary>The child has journaled its grandchild (both must die with the node).</summary>
    protected override async Task BeforeKillAsync(CliScenarioNode leader, LifeEvent child) =>
        _grandchild = await Journal.WaitAsync(e => e.Kind == LifeKind.Grandchild && e.Node == leader.Id && e.Pid == child.Pid);

    private LifeEvent? _grandchild;

    protected override async Task AfterKillAsync(CliScenarioNode leader, LifeEvent child)
    {
        // The parent-death signal kills the command; the watchdog kills what the command started.
        await ProcessWatch.AssertGoneAsync(child.Pid, "a's child");
        await ProcessWatch.AssertGoneAsync(int.Parse(_grandchild!.Detail!, System.Globalization.CultureInfo.InvariantCulture), "a's child's own child");
    }

    /// <summary>
    /// The stubborn script cannot journal its own end (SIGKILL), so the order is the kernel lock's: the follower's script
    /// writes <c>overlap</c> (see the scenario's no-overlap check) if it started while this one was alive.
    /// </summary>
    protected override async Task AssertStubbornChildEndedFirstAsync(CliScenarioNode leader, LifeEvent child, int mark, LifeEvent next)
    {
        Assert.Equal("stubborn", child.Detail);
        Assert.True(next.FromScript, Journal.Describe()); // the follower's start was witnessed by the kernel lock
        await ProcessWatch.AssertGoneAsync(child.Pid, "a's stubborn child");
        Assert.True(leader.Logged(HighlanderEventIds.CommandKilled) || leader.Logged(HighlanderEventIds.CommandEscalated), leader.Describe()); // SIGKILLed by highlander, not gone by itself
        Assert.True(leader.Logged(HighlanderEventIds.LeaseExpiring), leader.Describe());
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

/// <summary>A <c>highlander run</c> process as a scenario node.</summary>
public sealed class CliScenarioNode(string id, CliProcess cli) : IProcessScenarioNode
{
    public string Id { get; } = id;

    public Task WaitFollowingAsync(string leader) => cli.WaitLoggedAsync(HighlanderEventIds.Following);

    public async Task StepDownAsync()
    {
        cli.Signal(Native.SigTerm);
        Assert.Equal(0, await cli.WaitForExitAsync(TimeSpan.FromSeconds(15)));
    }

    public void Kill() => cli.Signal(Native.SigKill);

    public bool Logged(int eventId) => cli.Logged(eventId);

    public string Describe() => cli.Output;
}
