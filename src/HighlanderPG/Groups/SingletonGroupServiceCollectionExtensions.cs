using HighlanderPG;
using HighlanderPG.Groups;
using HighlanderPG.Hosting;
using HighlanderPG.Supervision;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Registers singleton groups: several hosted services under one lock and one fencing epoch.</summary>
public static class SingletonGroupServiceCollectionExtensions
{
    /// <summary>
    /// Runs several hosted services as one cluster singleton: one lock, one fencing epoch, on exactly one node. Once the
    /// lock is held the members start in declared order; they stop in reverse order before it is released; each gets the
    /// group's <see cref="ILeadership"/>. A member that exits is handled by the group's <see cref="GroupStrategy"/>
    /// within its restart intensity, without giving up the lock; past the intensity the group fails as a whole and
    /// <paramref name="configure"/>'s <see cref="ClusterSingletonOptions.RestartPolicy"/> and crash-loop handling apply,
    /// as for any singleton.
    /// </summary>
    /// <param name="services">The services.</param>
    /// <param name="name">The group's cluster-wide name (its singleton's name, from which its lock key derives); required, stable across versions.</param>
    /// <param name="build">Declares the members, the strategy and the intensity.</param>
    /// <param name="configure">The singleton's options (restart policy of the group as a whole, key, ...).</param>
    /// <exception cref="ArgumentException">
    /// The name is blank or already registered as a singleton or group, the group has no members, or two members share a name.
    /// </exception>
    public static IServiceCollection AddClusterSingletonGroup(this IServiceCollection services, string name, Action<SingletonGroupBuilder> build, Action<ClusterSingletonOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(services);
        if (string.IsNullOrWhiteSpace(name))
        {
            throw new ArgumentException(
                "A singleton group needs an explicit, stable name (e.g. \"billing\"): its lock key derives from the name, so it must be the same on every node and in every version.",
                nameof(name));
        }

        ArgumentNullException.ThrowIfNull(build);
        var builder = new SingletonGroupBuilder(name);
        build(builder);
        var group = builder.Build();
        if (services.Any(d => d.ImplementationInstance is SingletonRegistration r && r.Name == name))
        {
            throw new ArgumentException(NameClash(name), nameof(name));
        }

        HighlanderServiceCollectionExtensions.AddCore(services);
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<HighlanderOptions>, SingletonGroupValidator>());
        services.AddSingleton(group);
        services.AddSingleton(new SingletonRegistration(
            name,
            typeof(GroupSupervisor),
            sp =>
            {
                var options = sp.GetRequiredService<IOptions<HighlanderOptions>>().Value;
                var logger = sp.GetRequiredService<ILoggerFactory>().CreateLogger("HighlanderPG");
                var root = sp.GetRequiredService<HighlanderNode>();
                return new GroupSupervisor(group, sp.GetRequiredService<ILeadership>(), sp, options.StopTimeout, logger, () => _ = root.StepDownAsync(name));
            },
            configure));
        return services;
    }

    internal static string NameClash(string name) =>
        $"The name '{name}' is used by more than one cluster singleton or singleton group on this node: a group is one singleton (one lock key derived from its name), so give the group or the singleton another name.";
}

/// <summary>Refuses, when the host starts, a group whose name another singleton or group also uses (whatever the registration order).</summary>
internal sealed class SingletonGroupValidator(IEnumerable<SingletonRegistration> registrations, IEnumerable<SingletonGroup> groups) : IValidateOptions<HighlanderOptions>
{
    public ValidateOptionsResult Validate(string? name, HighlanderOptions options)
    {
        var groupNames = groups.Select(g => g.Name).ToHashSet();
        var clashes = registrations.GroupBy(r => r.Name).Where(g => g.Count() > 1 && groupNames.Contains(g.Key)).Select(g => SingletonGroupServiceCollectionExtensions.NameClash(g.Key)).ToList();
        return clashes.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(clashes);
    }
}
