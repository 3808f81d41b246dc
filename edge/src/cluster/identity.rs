//! The data folder remembers which node it belongs to and how many partitions its cluster
//! hashes conversations into: a store started with another id or another count would look for
//! conversations where they are not, so it refuses to start and says why.
//!
//! `<data_dir>/store/CLUSTER` holds two lines, `node_id = N` and `partitions = P`, written
//! when the store is first made (a folder from before this record is taken as a single
//! node's, with the default 256 partitions, and gets the record then).

use std::path::Path;

pub const FILE: &str = "CLUSTER";

/// Checks the folder's record against this start, or writes it for a new folder.
pub fn check_or_record(data_dir: &Path, node_id: u16, partitions: u32) -> Result<(), String> {
    let dir = data_dir.join("store");
    let file = dir.join(FILE);
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let (id, count) = if dir.join("SHARDS").exists() { (0, 256) } else { (node_id, partitions) };
            write(&file, id, count)?;
            return check_or_record(data_dir, node_id, partitions);
        }
        Err(e) => return Err(format!("{}: {e}", file.display())),
    };
    let field = |name: &str| -> Result<u64, String> {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.trim_start().strip_prefix('=')))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("{}: no {name} line", file.display()))
    };
    let (recorded_id, recorded_partitions) = (field("node_id")?, field("partitions")?);
    if recorded_id != u64::from(node_id) {
        return Err(format!(
            "{} belongs to node {recorded_id}, but this node is node_id {node_id}: a store is never moved to another id (use that node's configuration, or another data_dir)",
            data_dir.display()
        ));
    }
    if recorded_partitions != u64::from(partitions) {
        return Err(format!(
            "{} was made with partitions = {recorded_partitions}, but this start says {partitions}: conversations are placed by that count, so it cannot change (set partitions = {recorded_partitions})",
            data_dir.display()
        ));
    }
    Ok(())
}

fn write(file: &Path, node_id: u16, partitions: u32) -> Result<(), String> {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, format!("node_id = {node_id}\npartitions = {partitions}\n"))
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, file))
        .map_err(|e| format!("{}: {e}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_keeps_its_node_and_partition_count() {
        let dir = std::env::temp_dir().join(format!("sb-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        check_or_record(&dir, 2, 256).unwrap();
        check_or_record(&dir, 2, 256).unwrap();
        let e = check_or_record(&dir, 3, 256).unwrap_err();
        assert!(e.contains("belongs to node 2") && e.contains("node_id 3"), "{e}");
        let e = check_or_record(&dir, 2, 128).unwrap_err();
        assert!(e.contains("partitions = 256") && e.contains("says 128"), "{e}");
        // A single node's folder from before the record.
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::create_dir_all(dir.join("store")).unwrap();
        std::fs::write(dir.join("store/SHARDS"), "2\n").unwrap();
        check_or_record(&dir, 0, 256).unwrap();
        assert!(check_or_record(&dir, 1, 256).unwrap_err().contains("belongs to node 0"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
