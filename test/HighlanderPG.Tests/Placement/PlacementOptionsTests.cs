using HighlanderPG.Tests.Infrastructure;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;

namespace HighlanderPG.Tests.Placement;

/// <summary>Bad placement options fail the host's start with a message that says what to fix.</summary>
public sealed class PlacementOptionsTests
{
    private const string Valid = "Host=127.0.0.1;Port=1;Username=u;Password=pw";

    [Fact]
    public async Task An_unknown_placement_is_refused()
    {
        var error = await StartAndFailAsync(o => o.Placement = (SingletonPlacement)7);
        Assert.Contains("Placement 7 is not a placement: use FirstComer or Spread", error.Message);
    }

    [Theory]
    [InlineData("eu-**", "'**'")]
    [InlineData("", "must not be empty")]
    [InlineData("node-[12]", "only '*' is a wildcard")]
    [InlineData("node 1", "without spaces")]
    public async Task A_bad_preferred_node_pattern_is_refused(string pattern, string expected)
    {
        var error = await StartAndFailAsync(o => o.Placement = SingletonPlacement.Spread, s => s.PreferredNodes.Add(pattern));
        Assert.Contains("Cluster singleton 'job': PreferredNodes:", error.Message);
        Assert.Contains(expected, error.Message);
    }

    [Fact]
    public async Task Preferred_nodes_without_the_spread_placement_are_refused()
    {
        var error = await StartAndFailAsync(_ => { }, s => s.PreferredNodes.Add("eu-*"));
        Assert.Contains("PreferredNodes needs Placement = Spread", error.Message);
    }

    [Theory]
    [InlineData(0, "SpreadGrace")]
    [InlineData(20_000, "SpreadGrace")]
    public async Task A_grace_that_is_not_positive_or_longer_than_the_lease_is_refused(int milliseconds, string expected)
    {
        var error = await StartAndFailAsync(o =>
        {
            o.Placement = SingletonPlacement.Spread;
            o.SpreadGrace = TimeSpan.FromMilliseconds(milliseconds);
        });
        Assert.Contains(expected, error.Message);
        Assert.Contains("must be positive and at most LeaseDuration", error.Message);
    }

    [Fact]
    public async Task A_negative_settle_time_is_refused()
    {
        var error = await StartAndFailAsync(o => o.SpreadSettleTime = TimeSpan.FromSeconds(-1));
        Assert.Contains("SpreadSettleTime must be between 0 and 1 day", error.Message);
    }

    private static async Task<OptionsValidationException> StartAndFailAsync(Action<HighlanderOptions> configure, Action<ClusterSingletonOptions>? singleton = null)
    {
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        builder.Services.AddSingleton(new LifeJournal(Path.Combine(Path.GetTempPath(), "never-written.log")));
        builder.Services.AddSingleton(new ChildBehavior());
        builder.Services.AddHighlander(o =>
        {
            o.ConnectionString = Valid;
            configure(o);
        });
        builder.Services.AddClusterSingleton<RecordingService>("job", o => singleton?.Invoke(o));
        using var host = builder.Build();
        return await Assert.ThrowsAsync<OptionsValidationException>(() => host.StartAsync());
    }
}
