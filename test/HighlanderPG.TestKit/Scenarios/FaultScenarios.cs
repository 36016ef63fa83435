using HighlanderPG.Diagnostics;
using HighlanderPG.TestKit.Journal;
using HighlanderPG.Testing;
using HighlanderPG.Testing.Journal;
using Npgsql;
using Xunit;

namespace HighlanderPG.TestKit.Scenarios;

/// <summary>
/// The fault scenarios written once and run against every kind of node: a suite derives a class per kind that starts its
/// nodes, and xUnit runs every scenario below for each (the facts are inherited). Each scenario has two nodes, <c>a</c>
/// (the leader) and <c>b</c>, one singleton, and one child-life journal that the kind's children write to.
/// </summary>
/// <typeparam name="TNode">The kind's node.</typeparam>
public abstract class FaultScenarios<TNode> : IAsyncLifetime
    where TNode : class, IScenarioNode
{
    private readonly List<IAsyncDisposable> _resources = [];

    /// <summary>The scenarios against the server at <paramref name="connectionString"/>.</summary>
    protected FaultScenarios(string connectionString) => ConnectionString = connectionString;

    /// <summary>The server's connection string (nodes that are not cut off connect with it).</summary>
    protected string ConnectionString { get; }

    /// <summary>The journal every child of the scenario writes its life to.</summary>
    protected abstract LifeJournal Journal { get; }

    /// <summary>The singleton's name, as the journal has it.</summary>
    protected abstract string Singleton { get; }

    /// <summary>
    /// Starts a node with the test timings (lease 3 s); it contends for <see cref="Singleton"/> at once. With
    /// <paramref name="stubbornChild"/>, its child ignores being told to stop, and the node's escalation is what ends it.
    /// </summary>
    protected abstract Task<TNode> StartNodeAsync(string id, string connectionString, bool stubbornChild = false);

    /// <summary>
    /// What the kind checks, once <paramref name="next"/> started on the follower, about how the cut-off leader's stubborn
    /// child (<paramref name="child"/>) was ended: by its escalation, and before <paramref name="next"/>.
    /// </summary>
    protected abstract Task AssertStubbornChildEndedFirstAsync(TNode leader, LifeEvent child, int mark, LifeEvent next);

    /// <summary>What the kind checks of its own about a cut-off leader after the scenario's assertions.</summary>
    protected virtual Task AfterCutOffAsync(TNode leader) => Task.CompletedTask;

    /// <summary>Nothing to prepare by default.</summary>
    public virtual Task InitializeAsync() => Task.CompletedTask;

    /// <summary>Disposes what the scenario started (the kind's nodes first, in its own override), then the proxies.</summary>
    public virtual async Task DisposeAsync()
    {
        for (var i = _resources.Count - 1; i >= 0; i--)
        {
            await _resources[i].DisposeAsync();
        }
    }

    /// <summary>A fault proxy in front of the server, disposed after the test.</summary>
    protected FaultProxy StartProxy()
    {
        var server = new NpgsqlConnectionStringBuilder(ConnectionString);
        var proxy = FaultProxy.Start(server.Host!, server.Port);
        _resources.Add(proxy);
        return proxy;
    }

    [Fact]
    public async Task A_leader_that_stops_gracefully_hands_over_and_its_child_stops_before_the_next_starts()
    {
        var a = await StartNodeAsync("a", ConnectionString);
        var first = await Journal.WaitStartedAsync(Singleton, node: "a");
        var b = await StartNodeAsync("b", ConnectionString);
        await b.WaitFollowingAsync("a");

        var mark = Journal.Mark();
        await a.StepDownAsync();
        var stopped = await Journal.WaitStoppedAsync(Singleton, "a", mark);
        var next = await Journal.WaitStartedAsync(Singleton, mark, node: "b");
        Assert.True(first.Seq < stopped.Seq && stopped.Seq < next.Seq, "the old child must stop before the new one starts:\n" + Journal.Describe());
        Assert.Equal(LifeKind.Stopped, stopped.Kind); // stopped when told, not killed
        Assert.True(a.Logged(HighlanderEventIds.Released), a.Describe()); // released and told the others: a hand-over, not a lease running out
        Journal.AssertNoOverlap();
    }

    [Fact]
    public async Task A_cut_off_leader_stops_its_child_before_another_node_starts()
    {
        var proxy = StartProxy();
        var a = await StartNodeAsync("a", proxy.ConnectionString(ConnectionString));
        await Journal.WaitStartedAsync(Singleton, node: "a");
        var b = await StartNodeAsync("b", ConnectionString);
        await b.WaitFollowingAsync("a");

        var mark = Journal.Mark();
        proxy.SetMode(ProxyMode.Blackhole);
        var stopped = await Journal.WaitStoppedAsync(Singleton, "a", mark);
        var next = await Journal.WaitStartedAsync(Singleton, mark, node: "b");
        Assert.True(stopped.Seq < next.Seq, "the cut-off leader's child must stop before another starts:\n" + Journal.Describe());
        Journal.AssertNoOverlap();
        Assert.True(a.Logged(HighlanderEventIds.LeaseExpiring), a.Describe()); // lease about to expire: stopping children
        await AfterCutOffAsync(a);
        proxy.SetMode(ProxyMode.Pass); // healed: a reconnects as a follower (and stops promptly at the end of the test)
    }

    [Fact]
    public async Task A_cut_off_leader_whose_child_will_not_stop_ends_it_before_another_node_starts()
    {
        var proxy = StartProxy();
        var a = await StartNodeAsync("a", proxy.ConnectionString(ConnectionString), stubbornChild: true);
        var first = await Journal.WaitStartedAsync(Singleton, node: "a");
        var b = await StartNodeAsync("b", ConnectionString);
        await b.WaitFollowingAsync("a");

        var mark = Journal.Mark();
        proxy.SetMode(ProxyMode.Blackhole);
        var next = await Journal.WaitStartedAsync(Singleton, mark, node: "b");
        await AssertStubbornChildEndedFirstAsync(a, first, mark, next);
        Journal.Poll();
        Assert.DoesNotContain(Journal.Events, e => e.Kind == LifeKind.Stopped && e.Node == "a"); // it never stopped by itself
        Journal.AssertNoOverlap();
        proxy.SetMode(ProxyMode.Pass); // healed, so that what is left of a stops promptly at the end of the test
    }
}

/// <summary>The scenarios of <see cref="FaultScenarios{TNode}"/>, and those only a node of its own process can have.</summary>
/// <typeparam name="TNode">The kind's node.</typeparam>
public abstract class ProcessFaultScenarios<TNode> : FaultScenarios<TNode>
    where TNode : class, IProcessScenarioNode
{
    /// <summary>The scenarios against the server at <paramref name="connectionString"/>.</summary>
    protected ProcessFaultScenarios(string connectionString)
        : base(connectionString)
    {
    }

    /// <summary>What the kind waits for before its leader, whose child is <paramref name="child"/>, is SIGKILLed.</summary>
    protected virtual Task BeforeKillAsync(TNode leader, LifeEvent child) => Task.CompletedTask;

    /// <summary>What the kind checks of its own once its leader was SIGKILLed (its child <paramref name="child"/> is gone, the exit code).</summary>
    protected abstract Task AfterKillAsync(TNode leader, LifeEvent child);

    [Fact]
    public async Task A_SIGKILLed_leader_is_replaced_by_a_follower()
    {
        var a = await StartNodeAsync("a", ConnectionString);
        var first = await Journal.WaitStartedAsync(Singleton, node: "a");
        var b = await StartNodeAsync("b", ConnectionString);
        await b.WaitFollowingAsync("a");

        await BeforeKillAsync(a, first);
        var mark = Journal.Mark();
        a.Kill();
        await AfterKillAsync(a, first);
        var next = await Journal.WaitStartedAsync(Singleton, mark, node: "b");
        Assert.True(next.Seq > first.Seq, Journal.Describe());
        Journal.AssertNoOverlap();
    }
}
