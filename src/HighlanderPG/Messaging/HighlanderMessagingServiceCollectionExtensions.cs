using HighlanderPG;
using HighlanderPG.Messaging;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Registers durable messages and calls to cluster singletons (see docs/messaging.md).</summary>
public static class HighlanderMessagingServiceCollectionExtensions
{
    /// <summary>
    /// Turns on messaging on this node: creates the messaging tables in the fencing schema, registers this node's
    /// singletons as known names, injects an <see cref="ISingletonInbox"/> into each child's scope, and registers a
    /// <see cref="SingletonClient"/> for this node's namespace. Requires <see cref="HighlanderOptions.Fencing"/>: the
    /// host's start fails otherwise, saying so.
    /// </summary>
    /// <param name="services">The services (with <c>AddHighlander</c>).</param>
    /// <param name="configure">Limits (queue size, deliveries, payload size, time-to-live), polling, serializer, data source.</param>
    public static IServiceCollection AddHighlanderMessaging(this IServiceCollection services, Action<HighlanderMessagingOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(services);
        var options = services.AddOptions<HighlanderMessagingOptions>();
        if (configure is not null)
        {
            options.Configure(configure);
        }

        if (services.Any(d => d.ServiceType == typeof(MessagingHub)))
        {
            return services;
        }

        services.TryAddSingleton(TimeProvider.System);
        services.AddSingleton<MessagingHub>();
        services.AddHostedService(sp => sp.GetRequiredService<MessagingHub>());
        services.TryAddScoped<ISingletonInbox>(sp => new SingletonInbox(sp.GetRequiredService<MessagingHub>(), sp.GetRequiredService<ILeadership>()));
        services.TryAddSingleton(sp =>
        {
            var hub = sp.GetRequiredService<MessagingHub>();
            var node = sp.GetRequiredService<IOptions<HighlanderOptions>>().Value;
            return new SingletonClient(hub.DataSource, false, new SingletonClientOptions { Namespace = node.Namespace, Schema = node.FencingSchema, Serializer = hub.Messaging.Serializer }, sp.GetRequiredService<TimeProvider>(), hub);
        });
        return services;
    }

    /// <summary>
    /// Registers a <see cref="SingletonClient"/> for a process that is not a node (no <c>AddHighlander</c> needed): it
    /// sends to and calls the singletons of the nodes that use the same database, namespace and schema.
    /// </summary>
    /// <param name="services">The services.</param>
    /// <param name="configure">At least <see cref="SingletonClientOptions.ConnectionString"/>.</param>
    public static IServiceCollection AddSingletonClient(this IServiceCollection services, Action<SingletonClientOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(configure);
        services.TryAddSingleton(_ =>
        {
            var options = new SingletonClientOptions();
            configure(options);
            return new SingletonClient(options);
        });
        return services;
    }
}
