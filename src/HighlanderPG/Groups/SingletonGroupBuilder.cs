using System.Diagnostics.CodeAnalysis;
using HighlanderPG.Supervision;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace HighlanderPG.Groups;

/// <summary>How a singleton group reacts when one of its members exits and is to be restarted (OTP's restart strategies).</summary>
public enum GroupStrategy
{
    /// <summary>Only the member that exited is restarted; the others keep running.</summary>
    OneForOne = 0,

    /// <summary>Every member is restarted: the others are stopped in reverse declared order, then all are started in declared order.</summary>
    OneForAll = 1,

    /// <summary>The member that exited and every member declared after it are restarted (stopped in reverse, started in order).</summary>
    RestForOne = 2,
}

/// <summary>When a member of a singleton group is restarted (OTP's restart types).</summary>
public enum MemberRestart
{
    /// <summary>Always restarted, whether it failed or completed normally.</summary>
    Permanent = 0,

    /// <summary>Restarted only after a failure (an exception, or a failed start); a normal completion leaves it ended.</summary>
    Transient = 1,

    /// <summary>Never restarted while the group runs (also not when a sibling's restart stops it); it runs again when the whole group starts again.</summary>
    Temporary = 2,
}

/// <summary>
/// Declares the members of a singleton group (see
/// <see cref="Microsoft.Extensions.DependencyInjection.SingletonGroupServiceCollectionExtensions.AddClusterSingletonGroup"/>):
/// members start in declared order once the group's lock is held and stop in reverse order before it is released.
/// </summary>
public sealed class SingletonGroupBuilder
{
    /// <summary>The default restart intensity: at most this many restarts within <see cref="DefaultRestartWindow"/>.</summary>
    public const int DefaultMaxRestarts = 3;

    private readonly List<GroupMemberSpec> _members = [];
    private GroupStrategy _strategy = GroupStrategy.OneForOne;
    private int _maxRestarts = DefaultMaxRestarts;
    private TimeSpan _restartWindow = DefaultRestartWindow;

    internal SingletonGroupBuilder(string name)
    {
        Name = name;
    }

    /// <summary>The default window of the restart intensity: 5 seconds (as OTP's default period).</summary>
    public static TimeSpan DefaultRestartWindow { get; } = TimeSpan.FromSeconds(5);

    /// <summary>The group's name (the singleton's name).</summary>
    public string Name { get; }

    /// <summary>
    /// Adds a member: <typeparamref name="TService"/> (any <see cref="IHostedService"/>, typically a
    /// <see cref="BackgroundService"/>), created through DI in its own scope for each run; it may take the group's
    /// <see cref="ILeadership"/> in its constructor.
    /// </summary>
    /// <typeparam name="TService">The hosted service. Do not also register it with <c>AddHostedService</c>.</typeparam>
    /// <param name="name">The member's name, unique within the group (it names the member in status, events and logs).</param>
    /// <param name="restart">When it is restarted; the default is <see cref="MemberRestart.Permanent"/>.</param>
    /// <exception cref="ArgumentException">The name is blank or already used in this group.</exception>
    public SingletonGroupBuilder Add<[DynamicallyAccessedMembers(DynamicallyAccessedMemberTypes.PublicConstructors)] TService>(string name, MemberRestart restart = MemberRestart.Permanent)
        where TService : class, IHostedService
    {
        AddMember(name, restart, typeof(TService), static sp => ActivatorUtilities.CreateInstance<TService>(sp));
        return this;
    }

    /// <summary>
    /// Adds a member given as a delegate: it gets the group's leadership, its run's scoped services, and a token that
    /// fires when it must stop. Returning ends the member's run (see <paramref name="restart"/>).
    /// </summary>
    /// <param name="name">The member's name, unique within the group.</param>
    /// <param name="run">The work.</param>
    /// <param name="restart">When it is restarted; the default is <see cref="MemberRestart.Permanent"/>.</param>
    /// <exception cref="ArgumentException">The name is blank or already used in this group.</exception>
    public SingletonGroupBuilder Add(string name, Func<ILeadership, IServiceProvider, CancellationToken, Task> run, MemberRestart restart = MemberRestart.Permanent)
    {
        ArgumentNullException.ThrowIfNull(run);
        AddMember(name, restart, typeof(DelegateSingleton), sp => new DelegateSingleton(sp.GetRequiredService<ILeadership>(), sp, run));
        return this;
    }

    /// <summary>Sets the restart strategy; the default is <see cref="GroupStrategy.OneForOne"/>.</summary>
    /// <param name="strategy">The strategy.</param>
    public SingletonGroupBuilder Strategy(GroupStrategy strategy)
    {
        if (!Enum.IsDefined(strategy))
        {
            throw new ArgumentOutOfRangeException(nameof(strategy), strategy, $"Unknown group strategy for group '{Name}'; use OneForOne, OneForAll or RestForOne.");
        }

        _strategy = strategy;
        return this;
    }

    /// <summary>
    /// Sets the group's restart intensity: more than <paramref name="maxRestarts"/> restarts within
    /// <paramref name="window"/> make the group fail as a whole (every member is stopped, and the singleton's own
    /// <see cref="ClusterSingletonOptions.RestartPolicy"/> and crash-loop handling apply). The default is
    /// <see cref="DefaultMaxRestarts"/> within <see cref="DefaultRestartWindow"/>.
    /// </summary>
    /// <param name="maxRestarts">At most this many restarts (0: the first member to need a restart fails the group).</param>
    /// <param name="window">The sliding window; positive.</param>
    public SingletonGroupBuilder Intensity(int maxRestarts, TimeSpan window)
    {
        if (maxRestarts < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(maxRestarts), maxRestarts, $"The restart intensity of group '{Name}' needs maxRestarts >= 0 (0 means the first restart fails the group).");
        }

        if (window <= TimeSpan.Zero)
        {
            throw new ArgumentOutOfRangeException(nameof(window), window, $"The restart intensity of group '{Name}' needs a positive window (e.g. TimeSpan.FromSeconds(5)).");
        }

        _maxRestarts = maxRestarts;
        _restartWindow = window;
        return this;
    }

    private void AddMember(string name, MemberRestart restart, Type serviceType, Func<IServiceProvider, IHostedService> factory)
    {
        if (string.IsNullOrWhiteSpace(name))
        {
            throw new ArgumentException($"Every member of group '{Name}' needs a name (e.g. \"mailer\"): it names the member in status, events and logs.", nameof(name));
        }

        if (name.Length > Hosting.HighlanderOptionsValidator.MaxNameLength || name.Any(char.IsControl))
        {
            // The names' rules, as for singletons and groups (it is shown in status, health checks and logs).
            throw new ArgumentException($"A member name of group '{Name}' must be 1 to {Hosting.HighlanderOptionsValidator.MaxNameLength} characters without control characters (it has {name.Length}).", nameof(name));
        }

        if (!Enum.IsDefined(restart))
        {
            throw new ArgumentOutOfRangeException(nameof(restart), restart, $"Unknown restart type for member '{name}' of group '{Name}'; use Permanent, Transient or Temporary.");
        }

        if (_members.Any(m => m.Name == name))
        {
            throw new ArgumentException($"Group '{Name}' already has a member named '{name}': member names must be unique within a group.", nameof(name));
        }

        _members.Add(new GroupMemberSpec(name, restart, serviceType, factory));
    }

    internal SingletonGroup Build()
    {
        if (_members.Count == 0)
        {
            throw new ArgumentException($"Group '{Name}' has no members: add at least one with Add<TService>(\"name\") or Add(\"name\", (leadership, services, token) => ...).", "build");
        }

        return new SingletonGroup(Name, [.. _members], _strategy, _maxRestarts, _restartWindow);
    }
}

/// <summary>One declared member of a group.</summary>
internal sealed record GroupMemberSpec(string Name, MemberRestart Restart, Type ServiceType, Func<IServiceProvider, IHostedService> Factory);
