using HighlanderPG.Cli.Processes;
using HighlanderPG.Cli.Tests.Infrastructure;
using HighlanderPG.Diagnostics;
using HighlanderPG.TestKit.Scenarios;

namespace HighlanderPG.Cli.Tests;

/// <summary>
/// The shared fault scenarios (<see cref="ProcessFaultScenarios{TNode}"/>: graceful hand-over, cut-off leader, cut-off
/// leader with a stubborn child, SIGKILLed leader) with <c>highlander run --procfile</c> nodes: the group's first member
/// is the journal's child script (a kernel lock proves that no two run at once), its second a plain <c>sleep</c>, so the
/// journal member is the last one stopped, after the other, within the group's one stop budget.
/// </summary>
[Collection(CliServer.Name)]
public sealed class GroupNodeScenarios(PostgresFixture pg) : ProcessFaultScenarios<CliScenarioNode>(pg.ConnectionString)
{
    /// <summary>Group timings: a 2 s stop budget for the two members inside a 4 s lease (2 × 500 ms + 2 s + 500 ms ≤ 4 s).</summary>
    private static readonly string[] Timings = ["--lease", "4s", "--heartbeat", "500ms", "--stop-timeout", "2s", "--safety-margin", "500ms", "--restart-delay", "200ms"];

    private readonly JournalDirectory _life = new();
    private readonly string _name = "group-" + Guid.NewGuid().ToString("N")[..8];
    private readonly List<CliProcess> _nodes = [];
    private LifeEvent? _grandchild;

    protected override LifeJournal Journal => _life.Journal;

    protected override string Singleton => _name;

    protected override Task<CliScenarioNode> StartNodeAsync(string id, string connectionString, bool stubbornChild = false)
    {
        var procfile = Path.Combine(_life.Path, "Procfile");
        File.WriteAllText(procfile, $"journal: exec sh '{_life.Script}'\nside: exec sleep 300\n");
        var cli = CliProcess.Start(["run", "--name", _name, "--node-id", id, "--procfile", procfile, .. Timings], JournalEnvironment.For(_life, connectionString, stubbornChild));
        _nodes.Add(cli);
        return Task.FromResult(new CliScenarioNode(id, cli));
    }

    /// <summary>The journal member has journaled its grandchild (both must die with the node).</summary>
    protected override async Task BeforeKillAsync(CliScenarioNode leader, LifeEvent child) =>
        _grandchild = await Journal.WaitAsync(e => e.Kind == LifeKind.Grandchild && e.Node == leader.Id && e.Pid == child.Pid);

    protected override async Task AfterKillAsync(CliScenarioNode leader, LifeEvent child)
    {
        await ProcessWatch.AssertGoneAsync(child.Pid, "a's journal member");
        await ProcessWatch.AssertGoneAsync(int.Parse(_grandchild!.Detail!, System.Globalization.CultureInfo.InvariantCulture), "a's journal member's own child");
    }

    /// <summary>The stubborn member cannot journal its end (SIGKILL), so the order is the kernel lock's, as for a single command.</summary>
    protected override async Task AssertStubbornChildEndedFirstAsync(CliScenarioNode leader, LifeEvent child, int mark, LifeEvent next)
    {
        Assert.Equal("stubborn", child.Detail);
        Assert.True(next.FromScript, Journal.Describe());
        await ProcessWatch.AssertGoneAsync(child.Pid, "a's stubborn journal member");
        Assert.True(leader.Logged(HighlanderEventIds.MemberKilled) || leader.Logged(HighlanderEventIds.GroupEscalated), leader.Describe()); // SIGKILLed by highlander
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
