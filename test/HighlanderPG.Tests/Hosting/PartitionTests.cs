using HighlanderPG.Diagnostics;
using System.Diagnostics;
using HighlanderPG.Testing;
using HighlanderPG.TestKit.Network;
using HighlanderPG.Tests.Infrastructure;
using Npgsql;
using Xunit.Abstractions;

namespace HighlanderPG.Tests.Hosting;

/// <summary>
/// A real TCP-level partition: the server runs in a network namespace of its own, each node reaches it over its
/// own veth link, and the leader's link is cut with iptables DROP rules (no RST, no FIN: packets just vanish, and
/// no proxy's kernel answers for the server). Needs root, iproute2 and iptables; fails without them unless
/// HIGHLANDER_SKIP_NETNS=1.
/// </summary>
public sealed class PartitionTests(ITestOutputHelper output)
{
    public const string SkipVariable = "HIGHLANDER_SKIP_NETNS";

    [Fact]
    public async Task A_leader_partitioned_by_iptables_stops_its_child_before_another_node_starts()
    {
        if (!NetworkLab.IsSupported(out var reason))
        {
            if (Environment.GetEnvironmentVariable(SkipVariable) == "1")
            {
                output.WriteLine($"Not run ({SkipVariable}=1): {reason}.");
                return;
            }

            Assert.Fail(
                $"This test needs a real network partition, but {reason}. Run the tests as root with iproute2 and iptables " +
                $"(.ci/run installs iptables), or set {SkipVariable}=1 to skip it knowingly.");
        }

        // Disposed in reverse order: the cluster (after the cut link is healed, below), then the server, then the lab.
        await using var lab = await NetworkLab.CreateAsync(links: 2);
        var cutLink = lab.Links[0];
        var otherLink = lab.Links[1];
        output.WriteLine($"namespace {lab.NamespaceName}; cut: {cutLink}; other: {otherLink}");
        await using var server = await lab.StartServerAsync(cutLink, otherLink);
        Assert.Equal(cutLink.NamespaceAddress, server.Host);
        string Via(NetworkLink link) => new NpgsqlConnectionStringBuilder(server.ConnectionString) { Host = link.NamespaceAddress }.ConnectionString;

        await using var cluster = new TestCluster(Via(otherLink));
        try
        {
            var leader = await cluster.StartNodeAsync("cut", connectionString: Via(cutLink));
            await cluster.Recorder.WaitStartedAsync("job", node: "cut");
            var follower = await cluster.StartNodeAsync("other", connectionString: Via(otherLink));
            await follower.WaitForLeaderAsync("job", "cut");

            // Each node's lock session really goes over its own link.
            Assert.Equal(cutLink.HostAddress, await ClientAddressAsync(Via(otherLink), "highlander/cut"));
            Assert.Equal(otherLink.HostAddress, await ClientAddressAsync(Via(otherLink), "highlander/other"));

            var mark = cluster.Recorder.Mark();
            var cutAt = Stopwatch.GetTimestamp();
            var cutWall = DateTimeOffset.UtcNow;
            await cutLink.PartitionAsync();
            var cutTook = Stopwatch.GetElapsedTime(cutAt);
            var stopped = await cluster.Recorder.WaitStoppedAsync("job", "cut", mark);
            var next = await cluster.Recorder.WaitStartedAsync("job", mark, node: "other");

            output.WriteLine(
                $"partition took {cutTook.TotalMilliseconds:F0} ms; after it began: child of 'cut' stopped at " +
                $"+{(stopped.At - cutWall).TotalMilliseconds:F0} ms, child of 'other' started at " +
                $"+{(next.At - cutWall).TotalMilliseconds:F0} ms (lease 3 s)");
            output.WriteLine(cluster.Recorder.Describe());

            Assert.True(stopped.Seq < next.Seq, cluster.Recorder.Describe());
            cluster.Recorder.AssertNoOverlap();
            Assert.Contains(cluster.Logs.Entries, e => e.Node == "cut" && e.EventId.Id == HighlanderEventIds.LeaseExpiring); // lease about to expire
            Assert.NotEqual(SingletonState.Leading, leader.Singletons.Get("job")!.State);
        }
        finally
        {
            // The cut node's abandoned connection and its reconnect attempts must not hold up the nodes' shutdown.
            await cutLink.HealAsync();
        }
    }

    [Fact]
    public async Task A_server_in_a_network_namespace_needs_an_address_reachable_from_here()
    {
        // Checked before anything is created, so it needs neither root nor a namespace that exists.
        var error = await Assert.ThrowsAsync<ArgumentException>(() => LocalPostgresServer.StartAsync(NetworkLab.ServerOptions("hl-no-such-namespace", "127.0.0.1")));
        Assert.Contains("ConnectHost", error.Message);
    }

    private static async Task<string?> ClientAddressAsync(string connectionString, string applicationName) =>
        await Db.ScalarAsync<string>(
            connectionString,
            "SELECT host(client_addr) FROM pg_stat_activity WHERE application_name = $1 ORDER BY backend_start LIMIT 1",
            applicationName);
}
