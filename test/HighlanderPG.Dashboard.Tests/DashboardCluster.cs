using System.Security.Claims;
using System.Text.Encodings.Web;
using Microsoft.AspNetCore.Authentication;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Npgsql;

namespace HighlanderPG.Dashboard.Tests;

/// <summary>The tests that share one PostgreSQL.</summary>
[CollectionDefinition(Name)]
public sealed class DashboardServer : ICollectionFixture<PostgresFixture>
{
    public const string Name = "Dashboard against a shared PostgreSQL";
}

/// <summary>
/// Nodes in this test process against a real PostgreSQL: an ASP.NET Core app (Kestrel on a free port) that is a node and
/// maps the dashboard, and plain hosts as other nodes. Each cluster has its own namespace and fencing schema.
/// </summary>
public sealed class DashboardCluster(string connectionString, string? fencingSchema = null) : IAsyncDisposable
{
    public const string AdminPolicy = "highlander-admin";

    private readonly List<IHost> _hosts = [];

    public string Namespace { get; } = "dash-" + Guid.NewGuid().ToString("N")[..10];

    public string FencingSchema { get; } = fencingSchema ?? "dash_" + Guid.NewGuid().ToString("N")[..10];

    public string ConnectionString => connectionString;

    public static void Timings(HighlanderOptions o)
    {
        o.LeaseDuration = TimeSpan.FromSeconds(3);
        o.HeartbeatInterval = TimeSpan.FromMilliseconds(500);
        o.StopTimeout = TimeSpan.FromSeconds(1);
        o.SafetyMargin = TimeSpan.FromMilliseconds(500);
        o.WaitSlice = TimeSpan.FromSeconds(1);
        o.ReconnectMinDelay = TimeSpan.FromMilliseconds(100);
        o.ReconnectMaxDelay = TimeSpan.FromSeconds(1);
        o.StepDownHoldOff = TimeSpan.FromSeconds(10);
        o.LockDelayAfterServerStart = TimeSpan.FromSeconds(3);
    }

    private void Configure(HighlanderOptions o, string nodeId)
    {
        o.ConnectionString = connectionString;
        o.Namespace = Namespace;
        o.NodeId = nodeId;
        o.Fencing = true;
        o.FencingSchema = FencingSchema;
        Timings(o);
        o.OnEscalation = _ => ValueTask.CompletedTask;
    }

    private static void AddSingletons(IServiceCollection services, string[] singletons)
    {
        foreach (var name in singletons)
        {
            services.AddClusterSingleton(name, async (_, _, ct) =>
            {
                try
                {
                    await Task.Delay(Timeout.Infinite, ct);
                }
                catch (OperationCanceledException)
                {
                }
            });
        }
    }

    /// <summary>An ASP.NET Core app that is a node and maps the dashboard at <c>/highlander</c>.</summary>
    public async Task<WebNode> StartWebNodeAsync(string nodeId, string[] singletons, Action<HighlanderDashboardOptions>? dashboard = null)
    {
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { EnvironmentName = "Production" });
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.Logging.ClearProviders();
        builder.Services.AddHighlander(o => Configure(o, nodeId));
        AddSingletons(builder.Services, singletons);
        builder.Services.AddAuthentication(HeaderAuthentication.SchemeName).AddScheme<AuthenticationSchemeOptions, HeaderAuthentication>(HeaderAuthentication.SchemeName, null);
        builder.Services.AddAuthorization(o => o.AddPolicy(AdminPolicy, p => p.RequireRole("admin")));
        builder.Services.AddAntiforgery();
        var app = builder.Build();
        app.UseAuthentication();
        app.UseAuthorization();
        app.MapHighlanderDashboard("/highlander", dashboard);
        await app.StartAsync();
        _hosts.Add(app);
        var address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        return new WebNode(nodeId, app, new Uri(address));
    }

    /// <summary>A plain host that is a node (no web server).</summary>
    public async Task<IHost> StartNodeAsync(string nodeId, string[] singletons)
    {
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        builder.Logging.ClearProviders();
        builder.Services.AddHighlander(o => Configure(o, nodeId));
        AddSingletons(builder.Services, singletons);
        var host = builder.Build();
        await host.StartAsync();
        _hosts.Add(host);
        return host;
    }

    public static async Task WaitForStateAsync(IHost node, string name, SingletonState state, TimeSpan? timeout = null)
    {
        var singletons = node.Services.GetRequiredService<IClusterSingletons>();
        using var cts = new CancellationTokenSource(timeout ?? TimeSpan.FromSeconds(60));
        var changes = singletons.WatchAsync(cts.Token).GetAsyncEnumerator(cts.Token);
        try
        {
            if (singletons.Get(name)?.State == state)
            {
                return;
            }

            while (await changes.MoveNextAsync())
            {
                if (changes.Current.Name == name && changes.Current.Current == state)
                {
                    return;
                }
            }
        }
        catch (OperationCanceledException) when (cts.IsCancellationRequested)
        {
        }
        finally
        {
            await changes.DisposeAsync();
        }

        throw new TimeoutException($"{singletons.NodeId}: {name} did not become {state}; it is {singletons.Get(name)}.");
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var host in Enumerable.Reverse(_hosts))
        {
            await host.StopAsync(TimeSpan.FromSeconds(30));
            if (host is IAsyncDisposable d)
            {
                await d.DisposeAsync();
            }
            else
            {
                host.Dispose();
            }
        }

        NpgsqlConnection.ClearAllPools();
        await using var connection = new NpgsqlConnection(connectionString);
        await connection.OpenAsync();
        await using var drop = new NpgsqlCommand($"DROP SCHEMA IF EXISTS {FencingSchema} CASCADE", connection);
        await drop.ExecuteNonQueryAsync();
    }
}

public sealed record WebNode(string NodeId, WebApplication App, Uri Address)
{
    public IClusterSingletons Singletons => App.Services.GetRequiredService<IClusterSingletons>();

    public Uri Dashboard => new(Address, "/highlander/");
}

/// <summary>Test authentication: the user named in the <c>X-Test-User</c> header, with the roles in <c>X-Test-Roles</c>.</summary>
public sealed class HeaderAuthentication(IOptionsMonitor<AuthenticationSchemeOptions> options, ILoggerFactory logger, UrlEncoder encoder)
    : AuthenticationHandler<AuthenticationSchemeOptions>(options, logger, encoder)
{
    public const string SchemeName = "TestHeader";

    protected override Task<AuthenticateResult> HandleAuthenticateAsync()
    {
        if (!Request.Headers.TryGetValue("X-Test-User", out var user) || string.IsNullOrEmpty(user))
        {
            return Task.FromResult(AuthenticateResult.NoResult());
        }

        var claims = new List<Claim> { new(ClaimTypes.Name, user.ToString()) };
        claims.AddRange(Request.Headers["X-Test-Roles"].ToString().Split(',', StringSplitOptions.RemoveEmptyEntries).Select(r => new Claim(ClaimTypes.Role, r)));
        var principal = new ClaimsPrincipal(new ClaimsIdentity(claims, SchemeName));
        return Task.FromResult(AuthenticateResult.Success(new AuthenticationTicket(principal, SchemeName)));
    }
}
