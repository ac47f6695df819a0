//! Raw output: the image itself, with holes and zero blocks as zero runs (so a written file stays sparse).

use super::Layout;
use crate::image::ExtentMap;

/// Appends bytes `[start, end)` of the image described by `map`: source ranges where it has data, zeros elsewhere
/// (including past the end of the image).
pub fn append_range(layout: &mut Layout, map: &ExtentMap, start: u64, end: u64) {
    let mut pos = start;
    let first = map.extents.partition_point(|e| e.end() <= start);
    for e in &map.extents[first..] {
        if e.start >= end {
            break;
        }
        let from = e.start.max(pos);
        let to = e.end().min(end);
        layout.zeros(from - pos);
        layout.source(from, to - from);
        pos = to;
    }
    layout.zeros(end - pos);
}

/// The raw image as a layout.
pub fn layout(map: &ExtentMap) -> Layout {
    let mut layout = Layout::new();
    append_range(&mut layout, map, 0, map.size);
    layout
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Piece;
    use crate::image::Extent;

    #[test]
    fn ranges_cut_extents_and_pad_past_the_end() {
        let map = ExtentMap::from_extents(100, vec![Extent { start: 10, len: 20 }, Extent { start: 50, len: 50 }]);
        let mut l = Layout::new();
        append_range(&mut l, &map, 20, 120);
        assert_eq!(
            l.pieces(),
            &[
                Piece::Source { offset: 20, len: 10 },
                Piece::Zero(20),
                Piece::Source { offset: 50, len: 50 },
                Piece::Zero(20)
            ]
        );
        assert_eq!(layout(&map).len(), 100);
    }
}
