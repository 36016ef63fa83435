namespace HighlanderPG.Dashboard;

/// <summary>Options of the HighlanderPG dashboard (<see cref="HighlanderDashboardEndpointRouteBuilderExtensions.MapHighlanderDashboard"/>).</summary>
public sealed class HighlanderDashboardOptions
{
    /// <summary>
    /// The authorization policy a user must satisfy to act (step a singleton's leader down, drain or undrain a node, on any
    /// node of the cluster). Checked when the dashboard is mapped: the policy must exist, with authorization and a default
    /// authentication scheme set up.
    /// <see langword="null"/> (the default): the dashboard is read-only and no action endpoint exists.
    /// </summary>
    public string? ActionsPolicy { get; set; }

    /// <summary>How often the database is read (and the page refreshes). Default 1 s; at least 100 ms.</summary>
    public TimeSpan PollInterval { get; set; } = TimeSpan.FromSeconds(1);

    /// <summary>How many recent hand-overs are kept and shown. Default 50.</summary>
    public int HandOverHistory { get; set; } = 50;

    /// <summary>
    /// The database to read. Default: the node's <c>HighlanderOptions.ConnectionString</c> (and its
    /// <c>ConfigureDataSource</c>). It is never shown.
    /// </summary>
    public string? ConnectionString { get; set; }

    /// <summary>The namespace to show. Default: the node's <c>HighlanderOptions.Namespace</c>.</summary>
    public string? Namespace { get; set; }

    /// <summary>The fencing schema to read, if it exists. Default: the node's <c>HighlanderOptions.FencingSchema</c>.</summary>
    public string? FencingSchema { get; set; }

    /// <summary>More names to recognise and list (this node's own singletons are always recognised).</summary>
    public IList<string> Names { get; } = [];

    /// <summary>The page's title. Default "HighlanderPG".</summary>
    public string Title { get; set; } = "HighlanderPG";
}
