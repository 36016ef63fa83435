using System.Diagnostics.CodeAnalysis;
using HighlanderPG;
using HighlanderPG.Hosting;
using HighlanderPG.Supervision;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Registers HighlanderPG and cluster singletons.</summary>
public static class HighlanderServiceCollectionExtensions
{
    /// <summary>
    /// Adds this node's HighlanderPG engine: one dedicated PostgreSQL session (plus one for waiting) holding the locks of
    /// every cluster singleton registered with <see cref="AddClusterSingleton{TService}"/>. Options are validated when
    /// the host starts.
    /// </summary>
    /// <param name="services">The services.</param>
    /// <param name="configure">Sets the options; at least <see cref="HighlanderOptions.ConnectionString"/>.</param>
    public static IServiceCollection AddHighlander(this IServiceCollection services, Action<HighlanderOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(configure);
        AddCore(services);
        services.Configure(configure);
        return services;
    }

    /// <summary>
    /// Adds this node's HighlanderPG engine with options bound from configuration (e.g. a <c>Highlander</c> section:
    /// <c>"Highlander": { "ConnectionString": "...", "LeaseDuration": "00:00:10" }</c>, or environment variables like
    /// <c>Highlander__ConnectionString</c>), then <paramref name="configure"/>.
    /// </summary>
    /// <param name="services">The services.</param>
    /// <param name="configuration">The configuration section to bind.</param>
    /// <param name="configure">Sets further options after binding; optional.</param>
    public static IServiceCollection AddHighlander(this IServiceCollection services, Microsoft.Extensions.Configuration.IConfiguration configuration, Action<HighlanderOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(configuration);
        AddCore(services);
        services.Configure<HighlanderOptions>(configuration);
        if (configure is not null)
        {
            services.Configure(configure);
        }

        return services;
    }

    /// <summary>
    /// Runs <typeparamref name="TService"/> (any <see cref="IHostedService"/>, typically a <see cref="BackgroundService"/>)
    /// on exactly one node of the cluster. A fresh instance is created through DI for each run; it may take
    /// <see cref="ILeadership"/> in its constructor.
    /// </summary>
    /// <typeparam name="TService">The hosted service. Do not also register it with <c>AddHostedService</c>.</typeparam>
    /// <param name="services">The services.</param>
    /// <param name="name">
    /// The singleton's cluster-wide name; required. Its lock key derives from it (see <see cref="SingletonKey"/>), so it
    /// must be the same on every node and in every version that may run side by side. It is deliberately not taken from
    /// the type's name: renaming the class during a rolling deploy would give old and new nodes different keys, and the
    /// work would run on both.
    /// </param>
    /// <param name="configure">Overrides the restart behaviour or sets an explicit key.</param>
    /// <exception cref="ArgumentException"><paramref name="name"/> is <see langword="null"/>, empty or blank.</exception>
    public static IServiceCollection AddClusterSingleton<[DynamicallyAccessedMembers(DynamicallyAccessedMemberTypes.PublicConstructors)] TService>(this IServiceCollection services, string name, Action<ClusterSingletonOptions>? configure = null)
        where TService : class, IHostedService
    {
        ThrowIfNoName(name);
        AddCore(services);
        services.AddSingleton(new SingletonRegistration(
            name,
            typeof(TService),
            sp => ActivatorUtilities.CreateInstance<TService>(sp),
            configure));
        return services;
    }

    /// <summary>
    /// Runs <paramref name="run"/> on exactly one node of the cluster. It gets the leadership, the run's scoped services,
    /// and a token that fires when it must stop.
    /// </summary>
    /// <param name="services">The services.</param>
    /// <param name="name">The singleton's cluster-wide name; required. Its lock key derives from it, so it must be the same on every node and in every version that may run side by side.</param>
    /// <param name="run">The work. Returning ends this run (see <see cref="ClusterSingletonOptions.RestartPolicy"/>).</param>
    /// <param name="configure">Overrides the restart behaviour or sets an explicit key.</param>
    /// <exception cref="ArgumentException"><paramref name="name"/> is <see langword="null"/>, empty or blank.</exception>
    public static IServiceCollection AddClusterSingleton(this IServiceCollection services, string name, Func<ILeadership, IServiceProvider, CancellationToken, Task> run, Action<ClusterSingletonOptions>? configure = null)
    {
        ThrowIfNoName(name);
        ArgumentNullException.ThrowIfNull(run);
        AddCore(services);
        services.AddSingleton(new SingletonRegistration(
            name,
            typeof(DelegateSingleton),
            sp => new DelegateSingleton(sp.GetRequiredService<ILeadership>(), sp, run),
            configure,
            run));
        return services;
    }

    // The name is the singleton's identity across the cluster and across versions: its lock key (and fencing row) derive
    // from it. A default taken from the class name would change with a rename, and during a rolling deploy old and new
    // nodes would hold different keys and both run the work, so there is no default.
    private static void ThrowIfNoName(string name)
    {
        if (string.IsNullOrWhiteSpace(name))
        {
            throw new ArgumentException(
                "A cluster singleton needs an explicit, stable name (e.g. \"outbox-relay\"): its lock key derives from the name, so it must be the same on every node and in every version. "
                + "The class name is not used as a default because renaming the class during a rolling deploy would give old and new nodes different keys, and the work would run twice.",
                nameof(name));
        }
    }

    internal static void AddCore(IServiceCollection services)
    {
        ArgumentNullException.ThrowIfNull(services);
        if (services.Any(d => d.ServiceType == typeof(HighlanderNode)))
        {
            return;
        }

        services.AddOptions<HighlanderOptions>().ValidateOnStart();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<HighlanderOptions>, HighlanderOptionsValidator>());
        services.TryAddSingleton(TimeProvider.System);
        services.AddSingleton<HighlanderNode>();
        services.AddSingleton<IClusterSingletons>(sp => sp.GetRequiredService<HighlanderNode>());
        services.AddHostedService(sp => sp.GetRequiredService<HighlanderNode>());
        services.TryAddScoped<LeadershipAccessor>();
        services.TryAddScoped(sp => sp.GetRequiredService<LeadershipAccessor>().Current
            ?? throw new InvalidOperationException($"{nameof(ILeadership)} is only available to a cluster singleton's child (registered with AddClusterSingleton)."));
    }
}
