using HighlanderPG.Discovery;
using Microsoft.Extensions.DependencyInjection;
using Npgsql;

namespace HighlanderPG.Dashboard.Tests;

/// <summary><see cref="ClusterSnapshot"/>, the library's view that the dashboard and <c>status --watch</c> share, against a real cluster.</summary>
[Collection(DashboardServer.Name)]
public sealed class ClusterSnapshotTests(PostgresFixture pg)
{
    [Fact]
    public async Task A_snapshot_lists_nodes_leaders_epochs_and_singletons_nobody_holds_and_the_hand_overs_between_two()
    {
        await using var cluster = new DashboardCluster(pg.ConnectionString);
        var a = await cluster.StartNodeAsync("snap-a", ["alpha", "beta"]);
        await DashboardCluster.WaitForStateAsync(a, "alpha", SingletonState.Leading);
        await DashboardCluster.WaitForStateAsync(a, "beta", SingletonState.Leading);
        var b = await cluster.StartNodeAsync("snap-b", ["alpha"]);
        await DashboardCluster.WaitForStateAsync(b, "alpha", SingletonState.Following);
        // Another namespace in the same fencing table: its singleton (of the same name) is not this namespace's.
        await using var other = new DashboardCluster(pg.ConnectionString, cluster.FencingSchema);
        var elsewhere = await other.StartNodeAsync("snap-other", ["alpha"]);
        await DashboardCluster.WaitForStateAsync(elsewhere, "alpha", SingletonState.Leading);
        await using var connection = new NpgsqlConnection(pg.ConnectionString);
        await connection.OpenAsync();

        var first = await ClusterSnapshot.ReadAsync(connection, cluster.Namespace, cluster.FencingSchema, ["never-registered"]);
        Assert.Equal(["alpha", "beta", "never-registered"], first.Singletons.Select(s => s.Name));
        var alpha = first.Singletons[0];
        Assert.Equal("snap-a", alpha.Leader?.NodeId);
        Assert.Equal(SingletonKey.Derive(cluster.Namespace, "alpha"), alpha.Key);
        Assert.Equal(cluster.Namespace, alpha.Namespace);
        Assert.NotNull(alpha.Since);
        Assert.Equal(alpha.FencingEpoch, alpha.LastEpoch);
        Assert.Null(first.Singletons[2].Leader); // a name given but held by nobody
        Assert.Null(first.DetailsUnavailable);
        // Every node in the database (those of this test: a node of an earlier test sharing the server may still be ending).
        var nodes = Ours(first);
        Assert.Equal(["snap-a", "snap-b", "snap-other"], nodes.Select(n => n.NodeId));
        Assert.Equal([alpha.Key, first.Singletons[1].Key], nodes[0].Leading); // in name order
        Assert.Single(nodes[0].LockSessions);
        Assert.Empty(nodes[1].Leading);
        Assert.Single(nodes[1].LockSessions);
        Assert.All(first.Nodes.SelectMany(n => n.LockSessions), s => Assert.StartsWith("highlander/", s.ApplicationName, StringComparison.Ordinal));
        Assert.Empty(first.HandOversSince(first));

        Assert.DoesNotContain(first.Singletons, s => s.Key == SingletonKey.Derive(other.Namespace, "alpha"));
        var all = await ClusterSnapshot.ReadAsync(connection, null, cluster.FencingSchema);
        Assert.Contains(all.Singletons, s => s.Namespace == other.Namespace && s.Name == "alpha" && s.Leader?.NodeId == "snap-other");

        // snap-a stops: beta is held by nobody (its last epoch and last node stay, from the fencing table), alpha moves to snap-b.
        var epochBefore = alpha.FencingEpoch!.Value;
        await a.StopAsync();
        await DashboardCluster.WaitForStateAsync(b, "alpha", SingletonState.Leading);
        // snap-a's sessions end as its connections close; the server lets a backend go a moment after its client did.
        var second = await ClusterSnapshot.ReadAsync(connection, cluster.Namespace, cluster.FencingSchema);
        for (var tries = 0; Ours(second).Any(n => n.NodeId == "snap-a") && tries < 300; tries++)
        {
            await Task.Delay(100);
            second = await ClusterSnapshot.ReadAsync(connection, cluster.Namespace, cluster.FencingSchema);
        }

        var alphaNow = second.Singletons.Single(s => s.Name == "alpha");
        Assert.Equal("snap-b", alphaNow.Leader?.NodeId);
        Assert.True(alphaNow.FencingEpoch > epochBefore);
        var beta = second.Singletons.Single(s => s.Name == "beta");
        Assert.Null(beta.Leader);
        Assert.Null(beta.FencingEpoch);
        Assert.NotNull(beta.LastEpoch);
        Assert.Equal("snap-a", beta.LastNodeId);
        Assert.Equal(["snap-b", "snap-other"], Ours(second).Select(n => n.NodeId));
        Assert.True(second.TakenAt >= first.TakenAt);

        var changes = second.HandOversSince(first).OrderBy(h => h.Name).ToList();
        Assert.Equal(2, changes.Count);
        Assert.Equal(("alpha", "snap-a", "snap-b", epochBefore), (changes[0].Name, changes[0].From, changes[0].To, changes[0].FromEpoch!.Value));
        Assert.Equal(alphaNow.FencingEpoch, changes[0].ToEpoch);
        Assert.Equal(("beta", "snap-a", (string?)null), (changes[1].Name, changes[1].From, changes[1].To));
        Assert.Equal(second.TakenAt, changes[0].ObservedAt);
    }

    private static List<ClusterNode> Ours(ClusterSnapshot snapshot) => [.. snapshot.Nodes.Where(n => n.NodeId.StartsWith("snap-", StringComparison.Ordinal))];

    [Fact]
    public async Task Bad_arguments_are_refused_with_what_to_fix()
    {
        await using var connection = new NpgsqlConnection(pg.ConnectionString);
        await connection.OpenAsync();
        var schema = await Assert.ThrowsAsync<ArgumentException>(() => ClusterSnapshot.ReadAsync(connection, "highlander", "Bad-Schema"));
        Assert.Contains("lowercase SQL identifier", schema.Message, StringComparison.Ordinal);
        var names = await Assert.ThrowsAsync<ArgumentException>(() => ClusterSnapshot.ReadAsync(connection, null, "highlander", ["job"]));
        Assert.Contains("namespace", names.Message, StringComparison.Ordinal);
    }
}
