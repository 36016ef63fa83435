namespace HighlanderPG.Supervision;

internal sealed class Leadership(string name, string nodeId, long key, DateTimeOffset acquiredAt, long? fencingEpoch, string @namespace, string fencingSchema, CancellationToken lostToken) : ILeadership
{
    public string Namespace { get; } = @namespace;

    public string FencingSchema { get; } = fencingSchema;

    public string Name { get; } = name;

    public string NodeId { get; } = nodeId;

    public long Key { get; } = key;

    public DateTimeOffset AcquiredAt { get; } = acquiredAt;

    public long? FencingEpoch { get; } = fencingEpoch;

    public CancellationToken LostToken { get; } = lostToken;
}

/// <summary>Carries the current incarnation's <see cref="ILeadership"/> inside its DI scope.</summary>
internal sealed class LeadershipAccessor
{
    public ILeadership? Current { get; set; }
}

/// <summary>One registered singleton: its name and how to make a fresh child for each incarnation.</summary>
internal sealed class SingletonRegistration(string name, Type serviceType, Func<IServiceProvider, Microsoft.Extensions.Hosting.IHostedService> factory, Action<ClusterSingletonOptions>? configure, Delegate? code = null)
{
    /// <summary>A delegate singleton's delegate (compiled ahead after a rehearsal, which runs a child of its own).</summary>
    public Delegate? Code { get; } = code;

    public string Name { get; } = name;

    public Type ServiceType { get; } = serviceType;

    public Func<IServiceProvider, Microsoft.Extensions.Hosting.IHostedService> Factory { get; } = factory;

    public Action<ClusterSingletonOptions>? Configure { get; } = configure;
}
