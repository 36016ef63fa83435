using HighlanderPG.Tests.Infrastructure;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;

namespace HighlanderPG.Tests.Hosting;

/// <summary>Every configuration that cannot be safe fails the host's start with a message that says what to fix.</summary>
public sealed class OptionsValidationTests
{
    private const string Valid = "Host=127.0.0.1;Port=1;Username=u;Password=s3cret-pw";

    public static TheoryData<string, string> BadOptions() => new()
    {
        { "missing connection string", "ConnectionString is required" },
        { "unparsable connection string", "cannot be parsed" },
        { "multiplexing", "Multiplexing=true" },
        { "lease too short", "LeaseDuration" },
        { "lease with sub-millisecond part", "whole milliseconds" },
        { "heartbeat not well below the lease", "HeartbeatInterval" },
        { "stop timeout does not fit in the lease", "The lease does not fit" },
        { "negative stop timeout", "StopTimeout must be positive" },
        { "lock delay shorter than the lease", "LockDelayAfterServerStart" },
        { "node id with a space", "NodeId" },
        { "empty namespace", "Namespace must not be empty" },
        { "negative max restarts", "MaxRestarts must not be negative" },
        { "wait slice not shorter than the lease", "WaitSlice" },
        { "bad fencing schema", "FencingSchema" },
        { "bad fencing schema with fencing off", "FencingSchema" },
        { "namespace with a control character", "Namespace must be 1 to 200 characters without control characters" },
        { "namespace too long", "Namespace must be 1 to 200 characters" },
        { "endpoint without fencing", "Endpoint needs Fencing = true" },
        { "port out of range", "the value of 'port' is out of range (1-65535)" },
        { "a missing ';' before the password", "its Host holds a space or '='" },
        { "stop timeout of for ever", "StopTimeout is 10675199.02:48:05.4775807; it must be at most 1 day" },
        { "heartbeat of for ever", "HeartbeatInterval is 10675199.02:48:05.4775807; it must be at most 1 day" },
        { "safety margin of for ever", "SafetyMargin is 10675199.02:48:05.4775807; it must be at most 1 day" },
        { "lock delay of for ever", "LockDelayAfterServerStart is 10675199.02:48:05.4775807; it must be at most 7 days" },
        { "reconnect delay of 60 days", "ReconnectMaxDelay is 60.00:00:00; it must be at most 1 day" },
        { "restart delay of 60 days", "RestartDelay must be between 0 and 1 day" },
        { "restart window of a year", "RestartWindow must be positive and at most 30 days" },
        { "restart policy out of the enum", "RestartPolicy 3 is not a restart policy" },
        { "crash-loop behaviour out of the enum", "CrashLoopBehavior 9 is not a crash-loop behaviour" },
        { "namespace with a trailing space", "starts or ends with a space" },
        { "namespace not composed", "is not in Unicode's composed form (NFC)" },
        { "fencing schema too long for its channels", "at most 54 characters" },
        { "fencing schema of the system", "not starting with pg_" },
        { "fencing schema a reserved word", "not a reserved SQL word" },
        { "single host with Target Session Attributes", "a single Host" },
    };

    private static void Apply(string @case, HighlanderOptions o)
    {
        o.ConnectionString = Valid;
        switch (@case)
        {
            case "missing connection string": o.ConnectionString = null; break;
            case "unparsable connection string": o.ConnectionString = "Host=x;Port=notanumber"; break;
            case "multiplexing": o.ConnectionString = Valid + ";Multiplexing=true"; break;
            case "lease too short": o.LeaseDuration = TimeSpan.FromMilliseconds(500); break;
            case "lease with sub-millisecond part": o.LeaseDuration = TimeSpan.FromTicks(150_000_001); break;
            case "heartbeat not well below the lease": o.HeartbeatInterval = TimeSpan.FromSeconds(6); break;
            case "stop timeout does not fit in the lease": o.StopTimeout = TimeSpan.FromSeconds(12); break;
            case "negative stop timeout": o.StopTimeout = TimeSpan.FromSeconds(-1); break;
            case "lock delay shorter than the lease": o.LockDelayAfterServerStart = TimeSpan.FromSeconds(1); break;
            case "node id with a space": o.NodeId = "my node"; break;
            case "empty namespace": o.Namespace = " "; break;
            case "negative max restarts": o.SingletonDefaults.MaxRestarts = -1; break;
            case "wait slice not shorter than the lease": o.WaitSlice = TimeSpan.FromSeconds(15); break;
            case "bad fencing schema": o.Fencing = true; o.FencingSchema = "Bad-Schema; DROP"; break;
            case "bad fencing schema with fencing off": o.FencingSchema = "Bad-Schema"; break; // it also names the control channel
            case "namespace with a control character": o.Namespace = "team\u0001a"; break;
            case "namespace too long": o.Namespace = new string('n', 201); break;
            case "endpoint without fencing": o.Endpoint = "http://10.0.0.7:8080"; break;
            case "port out of range": o.ConnectionString = "Host=127.0.0.1;Port=70000;Username=u;Password=s3cret-pw"; break;
            case "a missing ';' before the password": o.ConnectionString = "Host=127.0.0.1 Password=s3cret-pw;Username=u"; break;
            case "stop timeout of for ever": o.StopTimeout = TimeSpan.MaxValue; break;
            case "heartbeat of for ever": o.HeartbeatInterval = TimeSpan.MaxValue; break;
            case "safety margin of for ever": o.SafetyMargin = TimeSpan.MaxValue; break;
            case "lock delay of for ever": o.LockDelayAfterServerStart = TimeSpan.MaxValue; break;
            case "reconnect delay of 60 days": o.ReconnectMaxDelay = TimeSpan.FromDays(60); break;
            case "restart delay of 60 days": o.SingletonDefaults.RestartDelay = TimeSpan.FromDays(60); break;
            case "restart window of a year": o.SingletonDefaults.RestartWindow = TimeSpan.FromDays(365); break;
            case "restart policy out of the enum": o.SingletonDefaults.RestartPolicy = (RestartPolicy)3; break;
            case "crash-loop behaviour out of the enum": o.SingletonDefaults.CrashLoopBehavior = (CrashLoopBehavior)9; break;
            case "namespace with a trailing space": o.Namespace = "team "; break;
            case "namespace not composed": o.Namespace = "cafe\u0301"; break;
            case "fencing schema too long for its channels": o.FencingSchema = new string('s', 55); break;
            case "fencing schema of the system": o.FencingSchema = "pg_highlander"; break;
            case "fencing schema a reserved word": o.FencingSchema = "user"; break;
            case "single host with Target Session Attributes": o.ConnectionString = Valid + ";Target Session Attributes=primary"; break;
            default: throw new ArgumentOutOfRangeException(nameof(@case));
        }
    }

    [Theory]
    [MemberData(nameof(BadOptions))]
    public async Task Bad_options_fail_the_host_start_with_a_message_naming_them(string @case, string expected)
    {
        var error = await StartAndFailAsync(services =>
        {
            services.AddHighlander(o => Apply(@case, o));
            services.AddClusterSingleton<RecordingService>("job");
        });
        Assert.Contains(expected, error.Message);
        Assert.DoesNotContain("s3cret-pw", error.Message);
    }

    [Fact]
    public async Task Duplicate_names_are_refused()
    {
        var error = await StartAndFailAsync(services =>
        {
            services.AddHighlander(o => o.ConnectionString = Valid);
            services.AddClusterSingleton<RecordingService>("job");
            services.AddClusterSingleton<RecordingService>("job");
        });
        Assert.Contains("'job' is registered more than once", error.Message);
    }

    [Fact]
    public async Task Duplicate_explicit_keys_are_refused()
    {
        var error = await StartAndFailAsync(services =>
        {
            services.AddHighlander(o => o.ConnectionString = Valid);
            services.AddClusterSingleton<RecordingService>("a", o => o.Key = 42);
            services.AddClusterSingleton<RecordingService>("b", o => o.Key = 42);
        });
        Assert.Contains("same lock key 42", error.Message);
    }

    // Null, empty or blank names are refused earlier, by AddClusterSingleton itself (RegistrationApiTests).
    [Theory]
    [InlineData("bad\nname")]
    [InlineData("tab\tinside")]
    public async Task Control_character_names_are_refused(string name)
    {
        var error = await StartAndFailAsync(services =>
        {
            services.AddHighlander(o => o.ConnectionString = Valid);
            services.AddClusterSingleton<RecordingService>(name);
        });
        Assert.Contains("must be 1 to 200 characters", error.Message);
    }

    /// <summary>
    /// A name another node could write differently and still read the same: each would derive another lock key, and the
    /// work would run twice. Refused, saying why.
    /// </summary>
    [Theory]
    [InlineData("report ", "starts or ends with a space")]
    [InlineData(" report", "starts or ends with a space")]
    [InlineData("cafe\u0301", "is not in Unicode's composed form (NFC)")]
    [InlineData("half-SURROGATE-pair", "half of a surrogate pair")] // the half is put in below: a test's name must be valid text
    public async Task Names_that_another_node_could_write_differently_are_refused(string name, string expected)
    {
        name = name.Replace("-SURROGATE-", "\ud800", StringComparison.Ordinal);
        var error = await StartAndFailAsync(services =>
        {
            services.AddHighlander(o => o.ConnectionString = Valid);
            services.AddClusterSingleton<RecordingService>(name);
        });
        Assert.Contains(expected, error.Message);
    }

    [Fact]
    public async Task Over_long_names_are_refused()
    {
        var error = await StartAndFailAsync(services =>
        {
            services.AddHighlander(o => o.ConnectionString = Valid);
            services.AddClusterSingleton<RecordingService>(new string('x', 201));
        });
        Assert.Contains("must be 1 to 200 characters", error.Message);
    }

    [Fact]
    public async Task A_singleton_without_AddHighlander_still_demands_a_connection_string()
    {
        var error = await StartAndFailAsync(services => services.AddClusterSingleton<RecordingService>("job"));
        Assert.Contains("ConnectionString is required", error.Message);
    }

    private static async Task<OptionsValidationException> StartAndFailAsync(Action<IServiceCollection> configure)
    {
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        builder.Services.AddSingleton(new LifeJournal(Path.Combine(Path.GetTempPath(), "never-written.log")));
        builder.Services.AddSingleton(new ChildBehavior());
        configure(builder.Services);
        using var host = builder.Build();
        return await Assert.ThrowsAsync<OptionsValidationException>(() => host.StartAsync());
    }
}
