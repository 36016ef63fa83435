using HighlanderPG.Groups;
using HighlanderPG.Tests.Infrastructure;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;

namespace HighlanderPG.Tests.Groups;

/// <summary>Bad input to the group registration API gets a clear error at registration (or, for name clashes, at start).</summary>
[Collection(SharedServer.Name)]
public sealed class SingletonGroupRegistrationTests(PostgresFixture pg)
{
    [Theory]
    [InlineData(null)]
    [InlineData("")]
    [InlineData("  ")]
    public void A_group_without_a_name_is_refused(string? name)
    {
        var services = new ServiceCollection();
        var error = Assert.ThrowsAny<ArgumentException>(() => services.AddClusterSingletonGroup(name!, g => g.Add<Probe<A>>("a")));
        Assert.Equal("name", error.ParamName);
        Assert.Contains("explicit, stable name", error.Message);
        Assert.Empty(services);
    }

    [Fact]
    public void An_empty_group_is_refused()
    {
        var services = new ServiceCollection();
        var error = Assert.ThrowsAny<ArgumentException>(() => services.AddClusterSingletonGroup("billing", _ => { }));
        Assert.Contains("Group 'billing' has no members", error.Message);
        Assert.Empty(services);
    }

    [Fact]
    public void Duplicate_member_names_are_refused()
    {
        var services = new ServiceCollection();
        var error = Assert.ThrowsAny<ArgumentException>(() => services.AddClusterSingletonGroup("billing", g => g.Add<Probe<A>>("ledger").Add("ledger", (_, _, _) => Task.CompletedTask)));
        Assert.Contains("Group 'billing' already has a member named 'ledger'", error.Message);
        Assert.Empty(services);
    }

    [Theory]
    [InlineData(null)]
    [InlineData("")]
    [InlineData(" ")]
    public void A_member_without_a_name_is_refused(string? member)
    {
        var services = new ServiceCollection();
        var error = Assert.ThrowsAny<ArgumentException>(() => services.AddClusterSingletonGroup("billing", g => g.Add<Probe<A>>(member!)));
        Assert.Contains("Every member of group 'billing' needs a name", error.Message);
    }

    [Theory]
    [InlineData("mail\u0001er")]
    [InlineData("line\nbreak")]
    public void A_member_name_with_a_control_character_or_too_long_is_refused(string member)
    {
        var services = new ServiceCollection();
        var error = Assert.ThrowsAny<ArgumentException>(() => services.AddClusterSingletonGroup("billing", g => g.Add<Probe<A>>(member)));
        Assert.Contains("must be 1 to 200 characters without control characters", error.Message);
        var tooLong = Assert.ThrowsAny<ArgumentException>(() => new ServiceCollection().AddClusterSingletonGroup("billing", g => g.Add<Probe<A>>(new string('m', 201))));
        Assert.Contains("(it has 201)", tooLong.Message);
    }

    [Fact]
    public void An_invalid_intensity_is_refused()
    {
        var services = new ServiceCollection();
        var negative = Assert.Throws<ArgumentOutOfRangeException>(() => services.AddClusterSingletonGroup("billing", g => g.Add<Probe<A>>("a").Intensity(-1, TimeSpan.FromSeconds(5))));
        Assert.Equal("maxRestarts", negative.ParamName);
        Assert.Contains("maxRestarts >= 0", negative.Message);
        var window = Assert.Throws<ArgumentOutOfRangeException>(() => services.AddClusterSingletonGroup("billing", g => g.Add<Probe<A>>("a").Intensity(3, TimeSpan.Zero)));
        Assert.Equal("window", window.ParamName);
        Assert.Contains("positive window", window.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => services.AddClusterSingletonGroup("billing", g => g.Add<Probe<A>>("a").Strategy((GroupStrategy)42)));
        Assert.Throws<ArgumentOutOfRangeException>(() => services.AddClusterSingletonGroup("billing", g => g.Add<Probe<A>>("a", (MemberRestart)42)));
        Assert.Empty(services);
    }

    [Fact]
    public void A_group_named_like_a_singleton_registered_before_it_is_refused()
    {
        var services = new ServiceCollection();
        services.AddClusterSingleton<RecordingService>("billing");
        var count = services.Count;
        var error = Assert.ThrowsAny<ArgumentException>(() => services.AddClusterSingletonGroup("billing", g => g.Add<Probe<A>>("a")));
        Assert.Contains("'billing' is used by more than one cluster singleton or singleton group", error.Message);
        Assert.Equal(count, services.Count);

        var twice = new ServiceCollection();
        twice.AddClusterSingletonGroup("billing", g => g.Add<Probe<A>>("a"));
        Assert.ThrowsAny<ArgumentException>(() => twice.AddClusterSingletonGroup("billing", g => g.Add<Probe<B>>("b")));
    }

    [Fact]
    public async Task A_singleton_registered_after_a_group_of_the_same_name_fails_the_host_start()
    {
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        builder.Services.AddSingleton(new GroupLab());
        builder.Services.AddHighlander(o => o.ConnectionString = pg.ConnectionString);
        builder.Services.AddClusterSingletonGroup("billing", g => g.Add<Probe<A>>("a"));
        builder.Services.AddClusterSingleton<RecordingService>("billing");
        using var host = builder.Build();
        var error = await Assert.ThrowsAsync<OptionsValidationException>(() => host.StartAsync());
        Assert.Contains("'billing' is used by more than one cluster singleton or singleton group", error.Message);
    }
}
