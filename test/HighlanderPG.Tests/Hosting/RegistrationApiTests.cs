using System.Diagnostics.CodeAnalysis;
using System.Reflection;
using HighlanderPG.Diagnostics;
using HighlanderPG.Supervision;
using HighlanderPG.Tests.Infrastructure;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;

namespace HighlanderPG.Tests.Hosting;

/// <summary>The public registration API: explicit names, the crash-loop behavior, the health check's registration.</summary>
[Collection(SharedServer.Name)]
public sealed class RegistrationApiTests(PostgresFixture pg)
{
    [Theory]
    [InlineData(null)]
    [InlineData("")]
    [InlineData("   ")]
    public void A_hosted_service_singleton_without_a_name_is_refused_with_the_rolling_deploy_reason(string? name)
    {
        var services = new ServiceCollection();
        var error = Assert.ThrowsAny<ArgumentException>(() => services.AddClusterSingleton<RecordingService>(name!));
        Assert.Equal("name", error.ParamName);
        Assert.Contains("explicit, stable name", error.Message);
        Assert.Contains("rolling deploy", error.Message);
        Assert.Contains("run twice", error.Message);
        Assert.Empty(services); // nothing half-registered
    }

    [Theory]
    [InlineData(null)]
    [InlineData("")]
    [InlineData("\t")]
    public void A_delegate_singleton_without_a_name_is_refused_with_the_rolling_deploy_reason(string? name)
    {
        var services = new ServiceCollection();
        var error = Assert.ThrowsAny<ArgumentException>(() => services.AddClusterSingleton(name!, (_, _, _) => Task.CompletedTask));
        Assert.Equal("name", error.ParamName);
        Assert.Contains("rolling deploy", error.Message);
        Assert.Empty(services);
    }

    [Fact]
    public void The_name_given_is_the_name_registered_whatever_the_class_is_called()
    {
        var services = new ServiceCollection();
        services.AddClusterSingleton<RecordingService>("outbox-relay");
        var registration = Assert.Single(services, d => d.ServiceType == typeof(SingletonRegistration)).ImplementationInstance;
        Assert.Equal("outbox-relay", Assert.IsType<SingletonRegistration>(registration).Name);
    }

    [Fact]
    public void The_service_type_keeps_its_public_constructors_for_trimming()
    {
        var method = typeof(HighlanderServiceCollectionExtensions).GetMethods()
            .Single(m => m.Name == nameof(HighlanderServiceCollectionExtensions.AddClusterSingleton) && m.IsGenericMethodDefinition);
        var attribute = method.GetGenericArguments()[0].GetCustomAttribute<DynamicallyAccessedMembersAttribute>();
        Assert.NotNull(attribute);
        Assert.Equal(DynamicallyAccessedMemberTypes.PublicConstructors, attribute.MemberTypes);
    }

    [Fact]
    public void Health_check_tags_reach_the_registration()
    {
        var services = new ServiceCollection();
        services.AddHealthChecks().AddHighlander("singletons", HealthStatus.Unhealthy, tags: ["ready", "db"]);
        var registration = Assert.Single(services.BuildServiceProvider().GetRequiredService<IOptions<HealthCheckServiceOptions>>().Value.Registrations);
        Assert.Equal("singletons", registration.Name);
        Assert.Equal(HealthStatus.Unhealthy, registration.FailureStatus);
        Assert.Equal(new HashSet<string> { "ready", "db" }, registration.Tags);
    }

    [Fact]
    public void Health_check_defaults_are_unchanged_without_tags()
    {
        var services = new ServiceCollection();
        services.AddHealthChecks().AddHighlander();
        var registration = Assert.Single(services.BuildServiceProvider().GetRequiredService<IOptions<HealthCheckServiceOptions>>().Value.Registrations);
        Assert.Equal("highlander", registration.Name);
        Assert.Equal(HealthStatus.Degraded, registration.FailureStatus);
        Assert.Equal(new HashSet<string> { "highlander" }, registration.Tags);
    }

    [Fact]
    public void CrashLoopBehavior_defaults_to_StopHost_binds_from_configuration_and_is_copied_to_each_singleton()
    {
        Assert.Equal(CrashLoopBehavior.StopHost, new ClusterSingletonOptions().CrashLoopBehavior);

        var configuration = new ConfigurationBuilder()
            .AddInMemoryCollection(new Dictionary<string, string?>
            {
                ["Highlander:ConnectionString"] = "Host=127.0.0.1",
                ["Highlander:SingletonDefaults:CrashLoopBehavior"] = "GiveUp",
            })
            .Build();
        var services = new ServiceCollection();
        services.AddHighlander(configuration.GetSection("Highlander"));
        var options = services.BuildServiceProvider().GetRequiredService<IOptions<HighlanderOptions>>().Value;
        Assert.Equal(CrashLoopBehavior.GiveUp, options.SingletonDefaults.CrashLoopBehavior);
        Assert.Equal(CrashLoopBehavior.GiveUp, options.SingletonDefaults.CopyTo(new ClusterSingletonOptions()).CrashLoopBehavior);
    }

    [Fact]
    public async Task A_crash_loop_under_GiveUp_faults_the_singleton_here_keeps_the_host_running_and_leaves_it_to_others()
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        cluster.Behavior.FailuresLeft = 2; // the first run and its one allowed restart both fail
        var a = await cluster.StartNodeAsync("a", configure: o =>
        {
            o.SingletonDefaults.MaxRestarts = 1;
            o.SingletonDefaults.RestartDelay = TimeSpan.Zero;
            o.SingletonDefaults.CrashLoopBehavior = CrashLoopBehavior.GiveUp;
        }, services: s => s.AddHealthChecks().AddHighlander());
        await a.WaitForStateAsync("job", SingletonState.Faulted);

        var health = await a.Host.Services.GetRequiredService<HealthCheckService>().CheckHealthAsync();
        Assert.Equal(HealthStatus.Degraded, health.Status);
        Assert.Contains("Gave up after crash loops: job", health.Entries["highlander"].Description);
        Assert.Contains(cluster.Logs.Entries, e => e.EventId.Id == HighlanderEventIds.CrashLoop);

        // Another node takes it over (its runs no longer fail): a gave the lock up and does not contend again.
        await cluster.StartNodeAsync("b");
        var started = await cluster.Recorder.WaitStartedAsync("job", node: "b");
        Assert.Equal(2, cluster.Recorder.Events.Count(e => e.Kind == LifeKind.Started && e.Node == "a"));
        Assert.True(started.Seq > cluster.Recorder.Events.Last(e => e.Node == "a").Seq);
        Assert.False(a.Host.Services.GetRequiredService<IHostApplicationLifetime>().ApplicationStopping.IsCancellationRequested);
        Assert.Equal(SingletonState.Faulted, a.Singletons.Get("job")!.State);
        cluster.Recorder.AssertNoOverlap();
    }
}
