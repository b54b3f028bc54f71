//! Everything a results document is rendered to, besides its JSON: the terminal text ([`text`]), the
//! self-contained HTML report ([`html`]) and the timeline CSVs ([`csv`]).

pub mod autoscale;
pub mod csv;
pub mod html;
pub mod outage;
pub mod text;
