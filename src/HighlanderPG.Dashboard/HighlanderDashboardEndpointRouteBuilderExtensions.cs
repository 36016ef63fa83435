using System.Security.Cryptography;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using HighlanderPG.Diagnostics;
using HighlanderPG.Hosting;
using HighlanderPG.Operations;
using Microsoft.AspNetCore.Antiforgery;
using Microsoft.AspNetCore.Authorization;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Npgsql;

namespace HighlanderPG.Dashboard;

/// <summary>Maps the HighlanderPG dashboard.</summary>
public static partial class HighlanderDashboardEndpointRouteBuilderExtensions
{
    private static readonly Lazy<string> Page = new(() =>
    {
        using var stream = typeof(HighlanderDashboardEndpointRouteBuilderExtensions).Assembly.GetManifestResourceStream("HighlanderPG.Dashboard.dashboard.html")
            ?? throw new InvalidOperationException("The dashboard page is missing from the assembly's resources.");
        using var reader = new StreamReader(stream, Encoding.UTF8);
        return reader.ReadToEnd();
    });

    /// <summary>
    /// With actions on, what they need is checked when the dashboard is mapped, not at the first request (where a missing
    /// piece answered 500, and broke the read-only view too): the authorization services, the policy itself, and an
    /// authentication scheme to challenge with (else a refused POST is a 500, not a 401).
    /// </summary>
    private static void CheckAuthorizationSetUp(IServiceProvider services, string policy)
    {
        if (string.IsNullOrWhiteSpace(policy))
        {
            throw new InvalidOperationException("HighlanderPG dashboard: ActionsPolicy is blank: name an authorization policy, or leave it null for a read-only dashboard.");
        }

        if (services.GetService<IAuthorizationPolicyProvider>() is not { } policies || services.GetService<IAuthorizationService>() is null)
        {
            throw new InvalidOperationException($"HighlanderPG dashboard: ActionsPolicy is set ('{policy}') but authorization is not: add builder.Services.AddAuthorization(o => o.AddPolicy(\"{policy}\", ...)).");
        }

        if (policies.GetPolicyAsync(policy).GetAwaiter().GetResult() is not { } found)
        {
            throw new InvalidOperationException($"HighlanderPG dashboard: no authorization policy is named '{policy}' (ActionsPolicy): add it with builder.Services.AddAuthorization(o => o.AddPolicy(\"{policy}\", ...)).");
        }

        // A policy that names its own schemes challenges with those; else the default challenge scheme must exist.
        if (found.AuthenticationSchemes.Count == 0
            && (services.GetService<Microsoft.AspNetCore.Authentication.IAuthenticationSchemeProvider>() is not { } schemes
                || schemes.GetDefaultChallengeSchemeAsync().GetAwaiter().GetResult() is null))
        {
            throw new InvalidOperationException($"HighlanderPG dashboard: ActionsPolicy is set ('{policy}') but no authentication scheme is: add builder.Services.AddAuthentication(...) with a default scheme, so that who acts is known (and a refused request is a 401, not an error).");
        }
    }

    /// <summary>
    /// Maps the dashboard under <paramref name="pattern"/>: the page (<c>GET pattern</c>), its JSON
    /// (<c>GET pattern/api/snapshot</c>) and, only when <see cref="HighlanderDashboardOptions.ActionsPolicy"/> is set, the
    /// actions, behind that policy and an antiforgery token: step down (<c>POST pattern/api/singletons/{name}/step-down</c>,
    /// whichever node leads it), drain and undrain a node (<c>POST pattern/api/nodes/{node}/drain</c>, <c>.../undrain</c>).
    /// A singleton this node leads steps down locally; any other request goes through <see cref="ClusterControl"/>, so the
    /// dashboard's database role needs EXECUTE on the control functions (docs/operations.md).
    /// The cluster is read from the database every <see cref="HighlanderDashboardOptions.PollInterval"/> from the app's start.
    /// </summary>
    /// <param name="endpoints">The app (<c>WebApplication</c>) or another endpoint route builder.</param>
    /// <param name="pattern">The path prefix, e.g. <c>/highlander</c>.</param>
    /// <param name="configure">Sets the options.</param>
    /// <returns>The endpoints' group: add conventions to all of them, e.g. <c>.RequireAuthorization("ops")</c> to restrict who may look.</returns>
    public static RouteGroupBuilder MapHighlanderDashboard(this IEndpointRouteBuilder endpoints, string pattern = "/highlander", Action<HighlanderDashboardOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(endpoints);
        ArgumentException.ThrowIfNullOrWhiteSpace(pattern);
        var options = new HighlanderDashboardOptions();
        configure?.Invoke(options);
        var services = endpoints.ServiceProvider;
        var actionsEnabled = options.ActionsPolicy is not null;
        if (actionsEnabled && services.GetService<IAntiforgery>() is null)
        {
            throw new InvalidOperationException(
                $"HighlanderPG dashboard: ActionsPolicy is set ('{options.ActionsPolicy}'), so its POST needs an antiforgery token: add builder.Services.AddAntiforgery() (and the policy, with builder.Services.AddAuthorization(...)).");
        }

        if (actionsEnabled)
        {
            CheckAuthorizationSetUp(services, options.ActionsPolicy!);
        }

        var monitor = CreateMonitor(services, options);
        var control = actionsEnabled ? new ClusterControl(monitor.DataSource, monitor.Namespace, monitor.FencingSchema) : null;

        var lifetime = services.GetService<IHostApplicationLifetime>();
        if (lifetime is not null)
        {
            lifetime.ApplicationStarted.Register(monitor.Start);
            lifetime.ApplicationStopping.Register(() => monitor.DisposeAsync().AsTask().GetAwaiter().GetResult());
        }

        var group = endpoints.MapGroup(pattern);
        group.MapGet("/", (HttpContext context) => ServePage(context, options)).ExcludeFromDescription();
        group.MapGet("/api/snapshot", async (HttpContext context) =>
        {
            await monitor.FirstReadAsync(context.RequestAborted).ConfigureAwait(false);
            var actions = new DashboardJson.Actions(false, false, null, null);
            if (actionsEnabled)
            {
                var authorization = context.RequestServices.GetRequiredService<IAuthorizationService>();
                var allowed = (await authorization.AuthorizeAsync(context.User, options.ActionsPolicy!).ConfigureAwait(false)).Succeeded;
                if (allowed)
                {
                    var antiforgery = context.RequestServices.GetRequiredService<IAntiforgery>();
                    var tokens = antiforgery.GetAndStoreTokens(context);
                    actions = new DashboardJson.Actions(true, true, tokens.RequestToken, tokens.HeaderName);
                }
                else
                {
                    actions = new DashboardJson.Actions(true, false, null, null);
                }
            }

            context.Response.Headers.CacheControl = "no-store";
            context.Response.ContentType = "application/json; charset=utf-8";
            using var buffer = new MemoryStream();
            using (var writer = new Utf8JsonWriter(buffer))
            {
                DashboardJson.Write(writer, options.Title, monitor, actions);
            }

            buffer.Position = 0;
            await buffer.CopyToAsync(context.Response.Body, context.RequestAborted).ConfigureAwait(false);
        }).ExcludeFromDescription();

        if (actionsEnabled)
        {
            group.MapPost("/api/singletons/{name}/step-down", async (HttpContext context, string name) =>
            {
                if (await RejectForgeryAsync(context).ConfigureAwait(false) is { } rejected)
                {
                    return rejected;
                }

                var logger = context.RequestServices.GetRequiredService<ILoggerFactory>().CreateLogger("HighlanderPG.Dashboard");
                var user = context.User.Identity?.Name ?? "(anonymous)";
                var local = monitor.Local;
                if (local?.Get(name) is { State: SingletonState.Leading or SingletonState.Starting or SingletonState.Completed })
                {
                    // Led here: stepped down locally (no database privilege needed), with the node's StepDownHoldOff.
                    LogStepDown(logger, name, local.NodeId, user);
                    await local.StepDownAsync(name, context.RequestAborted).ConfigureAwait(false);
                    return Results.Ok(new { name, node = local.NodeId, steppedDown = true });
                }

                // Led elsewhere: through the database (step_down), whoever leads it.
                return await ControlAsync(async () =>
                {
                    var result = await control!.StepDownAsync(name, null, null, context.RequestAborted).ConfigureAwait(false);
                    LogStepDown(logger, name, result.NodeId, user);
                    return Results.Ok(new { name, node = result.NodeId, steppedDown = true, holdOffUntil = result.HoldOffUntil });
                }).ConfigureAwait(false);
            }).RequireAuthorization(options.ActionsPolicy!).ExcludeFromDescription();

            MapNodeAction(group, "drain", options.ActionsPolicy!, async (context, node, logger, user) =>
            {
                var result = await control!.DrainAsync(node, null, context.RequestAborted).ConfigureAwait(false);
                LogDrain(logger, node, user, result.HoldOffUntil);
                return Results.Ok(new { node, drained = true, holdOffUntil = result.HoldOffUntil, singletons = result.Singletons.Select(s => s.Name ?? s.Key.ToString(System.Globalization.CultureInfo.InvariantCulture)).ToArray(), otherNodes = result.OtherNodes });
            });
            MapNodeAction(group, "undrain", options.ActionsPolicy!, async (context, node, logger, user) =>
            {
                var ended = await control!.UndrainAsync(node, context.RequestAborted).ConfigureAwait(false);
                LogUndrain(logger, node, user, ended);
                return Results.Ok(new { node, undrained = true, ended });
            });
        }

        return group;
    }

    private static DashboardMonitor CreateMonitor(IServiceProvider services, HighlanderDashboardOptions options)
    {
        if (options.PollInterval < TimeSpan.FromMilliseconds(100))
        {
            throw new ArgumentException($"HighlanderPG dashboard: PollInterval ({options.PollInterval}) must be at least 100 ms.", nameof(options));
        }

        if (options.PollInterval > TimeSpan.FromDays(1))
        {
            throw new ArgumentException($"HighlanderPG dashboard: PollInterval ({options.PollInterval}) must be at most 1 day.", nameof(options));
        }

        if (options.HandOverHistory < 0)
        {
            throw new ArgumentException($"HighlanderPG dashboard: HandOverHistory ({options.HandOverHistory}) must not be negative.", nameof(options));
        }

        if (options.Namespace is { } ns && string.IsNullOrWhiteSpace(ns))
        {
            throw new ArgumentException("HighlanderPG dashboard: Namespace is blank: give the nodes' namespace, or leave it unset to use this app's HighlanderOptions.Namespace (or \"highlander\").", nameof(options));
        }

        if (options.FencingSchema is { } schema && !Fencing.FencingSql.IsValidSchema(schema))
        {
            throw new ArgumentException($"HighlanderPG dashboard: FencingSchema '{schema}' must be {Fencing.FencingSql.SchemaRule}: give the nodes' FencingSchema, or leave it unset.", nameof(options));
        }

        if (options.Names.Any(string.IsNullOrWhiteSpace))
        {
            throw new ArgumentException("HighlanderPG dashboard: Names holds a null or blank name: list the singletons' names.", nameof(options));
        }

        var node = services.GetService<IOptions<HighlanderOptions>>()?.Value;
        var connectionString = options.ConnectionString ?? node?.ConnectionString;
        if (string.IsNullOrWhiteSpace(connectionString))
        {
            throw new InvalidOperationException(
                "HighlanderPG dashboard: no database to read: call builder.Services.AddHighlander(o => o.ConnectionString = ...) or set the dashboard's ConnectionString option.");
        }

        NpgsqlDataSourceBuilder builder;
        try
        {
            // Aimed at the primary when it lists several hosts. Not repeated, nor Npgsql's exception carried: it may hold a password.
            builder = new NpgsqlDataSourceBuilder(ConnectionSettings.ForClient(connectionString, "ConnectionString").ConnectionString);
        }
        catch (ArgumentException ex)
        {
            throw new InvalidOperationException($"HighlanderPG dashboard: {ex.Message.Replace(" (Parameter 'ConnectionString')", "", StringComparison.Ordinal)} Fix ConnectionString.");
        }

        builder.ConnectionStringBuilder.ApplicationName = "highlander-dashboard";
        builder.ConnectionStringBuilder.MaxPoolSize = 2;
        if (options.ConnectionString is null)
        {
            node?.ConfigureDataSource?.Invoke(builder);
        }

        builder.ConnectionStringBuilder.ApplicationName = "highlander-dashboard";
        var local = services.GetService<IClusterSingletons>();
        return new DashboardMonitor(
            builder.Build(),
            options.Namespace ?? node?.Namespace ?? "highlander",
            options.FencingSchema ?? node?.FencingSchema ?? "highlander",
            [.. options.Names],
            local,
            options.PollInterval,
            options.HandOverHistory,
            services.GetService<TimeProvider>() ?? TimeProvider.System,
            services.GetRequiredService<ILoggerFactory>().CreateLogger("HighlanderPG.Dashboard"));
    }

    private static IResult ServePage(HttpContext context, HighlanderDashboardOptions options)
    {
        var request = context.Request;
        var path = (request.PathBase + request.Path).Value ?? "/";
        if (!path.EndsWith('/'))
        {
            // Relative URLs in the page (api/snapshot) resolve under the prefix only with a trailing slash.
            return Results.Redirect(path + "/" + request.QueryString, permanent: false);
        }

        var nonce = Convert.ToBase64String(RandomNumberGenerator.GetBytes(16));
        var html = Page.Value
            .Replace("{{NONCE}}", nonce, StringComparison.Ordinal)
            .Replace("{{TITLE}}", HtmlEncoder.Default.Encode(options.Title), StringComparison.Ordinal);
        var headers = context.Response.Headers;
        headers.CacheControl = "no-store";
        headers.ContentSecurityPolicy = $"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'self'";
        headers.XContentTypeOptions = "nosniff";
        headers["Referrer-Policy"] = "no-referrer";
        return Results.Content(html, "text/html; charset=utf-8");
    }

    /// <summary>Maps <c>POST api/nodes/{node}/{action}</c>: behind the policy and the antiforgery token, refusals as problems.</summary>
    private static void MapNodeAction(RouteGroupBuilder group, string action, string policy, Func<HttpContext, string, ILogger, string, Task<IResult>> run)
    {
        group.MapPost("/api/nodes/{node}/" + action, async (HttpContext context, string node) =>
        {
            if (await RejectForgeryAsync(context).ConfigureAwait(false) is { } rejected)
            {
                return rejected;
            }

            var logger = context.RequestServices.GetRequiredService<ILoggerFactory>().CreateLogger("HighlanderPG.Dashboard");
            return await ControlAsync(() => run(context, node, logger, context.User.Identity?.Name ?? "(anonymous)")).ConfigureAwait(false);
        }).RequireAuthorization(policy).ExcludeFromDescription();
    }

    /// <summary>The antiforgery check of every action: a problem to return, or <see langword="null"/> when the token is valid.</summary>
    private static async Task<IResult?> RejectForgeryAsync(HttpContext context)
    {
        var antiforgery = context.RequestServices.GetRequiredService<IAntiforgery>();
        try
        {
            await antiforgery.ValidateRequestAsync(context).ConfigureAwait(false);
            return null;
        }
        catch (AntiforgeryValidationException)
        {
            return Results.Problem("The antiforgery token is missing or invalid: reload the dashboard and try again.", statusCode: StatusCodes.Status400BadRequest);
        }
    }

    /// <summary>Runs a <see cref="ClusterControl"/> request; its refusals become problems that say what to fix.</summary>
    private static async Task<IResult> ControlAsync(Func<Task<IResult>> request)
    {
        try
        {
            return await request().ConfigureAwait(false);
        }
        catch (ClusterControlException ex) when (ex.SqlState == "42501")
        {
            return Results.Problem(ex.Message, statusCode: StatusCodes.Status403Forbidden, title: "The dashboard's database role may not do this");
        }
        catch (ClusterControlException ex)
        {
            return Results.Problem(ex.Message, statusCode: StatusCodes.Status409Conflict);
        }
        catch (ArgumentException ex)
        {
            return Results.Problem(ex.Message, statusCode: StatusCodes.Status400BadRequest);
        }
    }

    [LoggerMessage(EventId = HighlanderEventIds.DashboardDrain, Level = LogLevel.Information, Message = "Dashboard: {User} drained node {Node} until {Until}")]
    private static partial void LogDrain(ILogger logger, string node, string user, DateTimeOffset until);

    [LoggerMessage(EventId = HighlanderEventIds.DashboardUndrain, Level = LogLevel.Information, Message = "Dashboard: {User} undrained node {Node} ({Ended} hold-off(s) ended)")]
    private static partial void LogUndrain(ILogger logger, string node, string user, int ended);

    [LoggerMessage(EventId = HighlanderEventIds.DashboardStepDown, Level = LogLevel.Information, Message = "Dashboard: {User} made node {Node} step down from {Name}")]
    private static partial void LogStepDown(ILogger logger, string name, string node, string user);
}
