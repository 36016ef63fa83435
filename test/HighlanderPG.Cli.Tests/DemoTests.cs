using HighlanderPG.Cli.Tests.Infrastructure;

namespace HighlanderPG.Cli.Tests;

/// <summary><c>highlander demo</c>, as a user runs it: its own throwaway server, three node processes, five faults.</summary>
[Collection(Name)]
[CollectionDefinition(Name)]
public sealed class DemoTests
{
    public const string Name = "demo (own server)";

    [Fact]
    public async Task Demo_injects_every_fault_and_passes()
    {
        var (code, cli) = await CliProcess.RunAsync(["demo", "--duration", "90s"], timeout: TimeSpan.FromSeconds(150));

        Assert.True(code == 0, cli.Output);
        foreach (var fault in new[] { "graceful stop (SIGTERM)", "kill -9 of the leader", "cut off (proxy blackhole)", "pg_terminate_backend", "server restart" })
        {
            Assert.Contains(fault, cli.Stdout);
        }

        Assert.True(cli.Stdout.Contains("Invariants held", StringComparison.Ordinal), cli.Output);
        Assert.False(cli.Stdout.Contains("NOT RECOVERED", StringComparison.Ordinal), cli.Output);
        Assert.False(cli.Stdout.Contains("TWO CHILDREN", StringComparison.Ordinal), cli.Output);
    }
}
